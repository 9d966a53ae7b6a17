"""Image teachers from other libraries, read from local files only (no hub access at run time):
``teacher=timm`` (a timm ViT and a weights file) and ``teacher=hf`` (a transformers vision model
directory, e.g. a CLIP vision tower or DINOv2). Both see the whole image and hand out hidden states
in the student's token order; for a student that drops tokens, the visible rows are gathered the way
its encoder gathers them (same order, same padding)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout, Visible, in_keep_order
from mae_zoo.teachers.base import Teacher, file_sha256
from mae_zoo.utils.checks import safe_load

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


class ImageTeacher(Teacher):
    """Shared by the foreign image teachers: input re-normalisation and visible-row gathering.

    The student's images arrive normalised with the student's ``pixel_mean``/``pixel_std``; the
    teacher was trained with its own ``mean``/``std``, so the input is mapped back to [0, 1] pixels
    and normalised again for the teacher."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, path: str, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not path or not Path(path).exists():
            raise ConfigError(
                f"teacher={self.kind}: weights not found at '{path}' (a local path; nothing is downloaded)"
            )
        self.path, self.sha256 = str(path), file_sha256(path)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.student_pixels: nn.Module | None = None

    def bind(self, student: MaskedAutoencoder) -> None:
        pixels = getattr(student, "pixels", None)
        if pixels is None or getattr(student, "spatial_dims", 0) != 2:
            raise ConfigError(f"teacher={self.kind} is an image model; the student is {type(student).__name__}")
        self.check_grid(student, f"teacher={self.kind}")
        self.student_pixels = pixels

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "sha256": self.sha256}

    def images(self, batch: Any) -> torch.Tensor:
        from mae_zoo.core.module import MaskedAutoencoder

        x = MaskedAutoencoder.batch_inputs(batch)
        if self.student_pixels is not None:
            x = self.student_pixels.unnormalize(x)  # type: ignore[operator]
        return (x.float() - self.mean) / self.std

    def rows(self, full: list[torch.Tensor], mask: torch.Tensor | None) -> list[torch.Tensor]:
        """(B, prefix + L, D) hidden states -> the student's rows: all, or prefix + visible."""
        if mask is None:
            return full
        visible = Visible.from_mask(mask.to(full[0].device))
        p = self.num_prefix
        return [torch.cat([h[:, :p], visible.gather(h[:, p:])], dim=1) for h in full]


class TimmTeacher(ImageTeacher):
    """``teacher=timm``: ``timm.create_model(name, pretrained=False, **model_kwargs)`` and the weights
    of a local ``.safetensors``/``.pth``/``.bin`` file (a classifier head in the file is ignored)."""

    kind = "timm"

    def __init__(
        self,
        name: str,
        path: str,
        model_kwargs: dict | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        import timm

        model: Any = timm.create_model(name, pretrained=False, num_classes=0, **(model_kwargs or {}))
        cfg: dict = dict(model.pretrained_cfg or {})
        super().__init__(path, mean or cfg.get("mean", (0.5,) * 3), std or cfg.get("std", (0.5,) * 3))
        state = _read_weights(path)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"teacher=timm: {path} does not fit {name} {model_kwargs or {}}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        self.model: Any = model.eval().requires_grad_(False)
        self.layout = Layout("grid", ("h", "w"), tuple(model.patch_embed.grid_size))
        self.num_prefix, self.dim, self.depth = int(model.num_prefix_tokens), int(model.embed_dim), len(model.blocks)

    def block(self, index: int) -> nn.Module | None:
        return self.model.blocks[index]

    def hidden_states(self, batch: Any, blocks: Sequence[int], mask: torch.Tensor | None) -> list[torch.Tensor]:
        out = self.model.forward_intermediates(
            self.images(batch),
            indices=[int(i) % self.depth for i in blocks],
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        full = [torch.cat([prefix, tokens], dim=1) for tokens, prefix in out]  # timm returns block order
        return self.rows(in_keep_order(full, blocks, self.depth), mask)


class HFTeacher(ImageTeacher):
    """``teacher=hf``: a local transformers vision model directory (``save_pretrained`` layout); a CLIP
    directory uses its vision tower. Hidden states come from transformers' own
    ``output_hidden_states`` (entry i + 1 is the output of block i, before any final norm)."""

    kind = "hf"

    def __init__(self, path: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        from transformers import AutoConfig, AutoModel

        if not path or not Path(path).is_dir():
            raise ConfigError(f"teacher=hf: '{path}' is not a local model directory (nothing is downloaded)")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        vision = getattr(config, "vision_config", config)
        # Eager attention: SDPA kernels return no attention maps (MaskAlign masking reads them).
        model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
        model = getattr(model, "vision_model", model)
        # CLIP's processor statistics; DINOv2/ViT use ImageNet's. A config may give its own.
        clip = getattr(config, "model_type", "").startswith("clip")
        default_mean = (0.4815, 0.4578, 0.4082) if clip else (0.485, 0.456, 0.406)
        default_std = (0.2686, 0.2613, 0.2758) if clip else (0.229, 0.224, 0.225)
        super().__init__(path, mean or default_mean, std or default_std)
        self.model = model.eval().requires_grad_(False)
        grid = int(vision.image_size) // int(vision.patch_size)
        self.layout = Layout("grid", ("h", "w"), (grid, grid))
        self.num_prefix = 1 + int(getattr(vision, "num_register_tokens", 0) or 0)
        self.dim, self.depth = int(vision.hidden_size), int(vision.num_hidden_layers)

    def attention_maps(self, batch: Any, blocks: Sequence[int], mask: torch.Tensor | None) -> list[torch.Tensor]:
        out = self.model(pixel_values=self.images(batch), output_attentions=True)
        return [self.restrict(out.attentions[int(i) % self.depth].float(), mask) for i in blocks]

    def hidden_states(self, batch: Any, blocks: Sequence[int], mask: torch.Tensor | None) -> list[torch.Tensor]:
        out = self.model(pixel_values=self.images(batch), output_hidden_states=True)
        return self.rows([out.hidden_states[int(i) % self.depth + 1] for i in blocks], mask)


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = safe_load(path, "cpu")
    for key in ("model", "state_dict"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"teacher: {path} holds no state dict")
    return state
