class ConfigError(ValueError):
    """A configuration that cannot work; raised at start-up, before any training step."""


def divisors(n: int) -> list[int]:
    """The sizes that tile ``n`` exactly: what an error message offers as valid."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_patch_size(patch_size: int, size: int, what: str = "image size") -> None:
    """Fail at start-up when the patch does not tile the input, listing the patch sizes that do."""
    if size % patch_size:
        raise ConfigError(
            f"model.patch_size={patch_size} does not divide the {what} {size} (data.image_size); "
            f"valid patch sizes: {divisors(size)}"
        )
