"""Building objects from config so that our own ConfigError reaches the user as one line."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskLayoutError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def import_object(path: str) -> Any:
    """The object a dotted ``module.name`` path names, as checkpoints record classes (``mae_zoo.class``,
    ``mae_zoo.datamodule``) and configs their ``_target_``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """Hydra wraps constructor errors in InstantiationException; find our ConfigError inside."""
    while err is not None:
        if isinstance(err, ConfigError):
            return err
        err = err.__cause__ or err.__context__
    return None


def masks_fitting(layout: Layout) -> list[str]:
    """Names of the ``conf/mask`` options whose generator supports ``layout``."""
    names = []
    for path in sorted(CONF_DIR.joinpath("mask").glob("*.yaml")):
        if instantiate(OmegaConf.load(path)).supports(layout):
            names.append(path.stem)
    return names


@contextlib.contextmanager
def config_errors_surface() -> Iterator[None]:
    """Re-raise a ConfigError buried in any exception; a mask that does not fit also lists those that do."""
    try:
        yield
    except Exception as exc:
        err = find_config_error(exc)
        if err is None:
            raise
        if isinstance(err, MaskLayoutError):
            raise ConfigError(f"{err}. Masks that fit this modality: {masks_fitting(err.layout)}") from None
        raise err from None


def instantiate_checked(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` under :func:`config_errors_surface`."""
    with config_errors_surface():
        return instantiate(node, **kwargs)
