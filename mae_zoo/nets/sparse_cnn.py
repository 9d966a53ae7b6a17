"""Sparse convolution emulated on a dense timm ConvNet, as SparK (Tian et al., ICLR 2023; keyu-tian/SparK
``pretrain/encoder.py``) does it: the network stays a plain timm model (same modules, same state-dict
keys, so its weights load back into ``timm.create_model``), and while a mask is set

* the output of every convolution, pooling and LayerNorm is multiplied by the *active* (visible) map,
  upsampled from the mask grid to that layer's resolution (``repeat_interleave``; the layer's size
  must be a whole multiple of the grid), so hidden positions are exactly zero after each layer;
* every BatchNorm normalises with the statistics of the visible positions only (SparK gathers the
  visible positions into a (N, C) batch for a BatchNorm1d) and leaves zeros at the hidden ones;
* a ConvNeXt block's output is zeroed at hidden positions; its shortcut is already zero there, so this is
  SparK's zeroing of the residual branch before the sum.

With no mask set, every layer is its dense self: ``embed`` and evaluation see the timm network.
A layer that mixes positions in a way the emulation cannot follow (squeeze-excitation, GroupNorm,
attention) is refused at start-up rather than silently leaking hidden positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from mae_zoo.core.errors import ConfigError


class SparseMask:
    """The active map of the current step, shared by every sparse layer of one network.

    ``active`` (B, 1, h, w) bool, True = visible, at the mask grid (the network's final stride);
    None: dense. Hook methods are bound methods of this object, so a deep copy of the network
    carries its own copy of the mask state."""

    def __init__(self) -> None:
        self.active: torch.Tensor | None = None
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    @contextlib.contextmanager
    def using(self, active: torch.Tensor | None) -> Iterator[None]:
        """Set ``active`` for the duration of one forward; always dense again afterwards."""
        self.active, self._cache = active, {}
        try:
            yield
        finally:
            self.active, self._cache = None, {}

    def at(self, height: int, width: int) -> torch.Tensor | None:
        """The active map upsampled to a (height, width) feature map, (B, 1, height, width), or None."""
        active = self.active
        if active is None:
            return None
        fh, fw = active.shape[-2:]
        if height % fh or width % fw:
            raise ValueError(
                f"a {height}x{width} feature map is not a whole multiple of the {fh}x{fw} mask grid: "
                "SparK needs every layer's resolution to be the grid times an integer (image size a "
                "multiple of the downsample ratio)"
            )
        key = (height, width)
        if key not in self._cache:
            self._cache[key] = active.repeat_interleave(height // fh, 2).repeat_interleave(width // fw, 3)
        return self._cache[key]

    def mask_output(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook for channels-first (B, C, H, W) outputs."""
        active = self.at(output.shape[-2], output.shape[-1])
        return output if active is None else output * active.to(output.dtype)

    def mask_output_channels_last(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook for channels-last (B, H, W, C) outputs (ConvNeXt's LayerNorm inside a block)."""
        if output.ndim != 4:
            return output
        active = self.at(output.shape[1], output.shape[2])
        return output if active is None else output * active[:, 0, :, :, None].to(output.dtype)


class SparseBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose statistics (and running estimates) come from the visible positions only.
    Same parameters and buffers as ``nn.BatchNorm2d``; a network's BatchNorm2d layers become this
    class in place (their ``__class__``), so nothing else about them changes."""

    sparse: SparseMask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self.sparse.at(x.shape[-2], x.shape[-1]) if getattr(self, "sparse", None) is not None else None
        if active is None:
            return super().forward(x)
        # SparK gathers the visible positions into an (N, C) batch for BatchNorm1d; the same statistics as
        # masked sums (boolean gather/scatter's backward crashed torch 2.14 on CPU at 224 px).
        # Statistics in float32 whatever the autocast dtype, as BatchNorm kernels keep them.
        dtype, x = x.dtype, x.float()
        keep = active.to(x.dtype)
        if self.training or not self.track_running_stats:
            n = keep.sum()
            mean = (x * keep).sum(dim=(0, 2, 3)) / n
            var = ((x - mean[None, :, None, None]).pow(2) * keep).sum(dim=(0, 2, 3)) / n
            if self.training and self.track_running_stats:
                self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))
        else:
            assert self.running_mean is not None and self.running_var is not None
            mean, var = self.running_mean, self.running_var
        scale = torch.rsqrt(var + self.eps)
        weight = scale if self.weight is None else scale * self.weight
        shift = -mean * weight if self.bias is None else self.bias - mean * weight
        return ((x * weight[None, :, None, None] + shift[None, :, None, None]) * keep).to(dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


def sparse_batch_norm(channels: int, sparse: SparseMask) -> SparseBatchNorm2d:
    """A fresh sparse BatchNorm (SparK's densify norm for ResNets)."""
    bn = SparseBatchNorm2d(channels)
    bn.sparse = sparse
    return bn


def _timm_types() -> tuple[tuple[type[nn.Module], ...], tuple[type[nn.Module], ...], tuple[type[nn.Module], ...]]:
    """(channels-first LayerNorms, residual blocks to mask before the sum, containers known to add no
    mixing of positions of their own)."""
    from timm.layers import LayerNorm2d, Mlp
    from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict, ResNet, BasicBlock, Bottleneck, ConvNeXt, ConvNeXtStage)
    return (LayerNorm2d,), (ConvNeXtBlock,), (*containers, Mlp)


SPATIAL: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
)  # outputs masked, as SparK's SparseConv2d / pooling
# Per position, so hidden values never reach a visible one before the next masked layer.
POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.Tanh, nn.Sigmoid,
    nn.Identity, nn.Dropout, nn.Linear,
)  # fmt: skip
HEAD_NAMES = ("fc", "global_pool", "head", "norm_pre")  # timm classifier parts: not on the feature path


def sparsify(net: nn.Module, sparse: SparseMask) -> None:
    """Make ``net`` (a timm ResNet or ConvNeXt, built without classifier) run sparsely while
    ``sparse.active`` is set; in place, parameters and state-dict keys unchanged. Raises
    ``ConfigError`` naming the first layer the emulation cannot follow."""
    from timm.layers import DropPath, activations

    timm_acts = ("Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU", "GELUTanh")
    pointwise = (*POINTWISE, DropPath, *(getattr(activations, n) for n in timm_acts if hasattr(activations, n)))
    channels_first_ln, blocks, containers = _timm_types()
    for name, module in net.named_modules():
        if name.split(".")[0] in HEAD_NAMES:
            continue
        if type(module) is nn.BatchNorm2d:
            module.__class__ = SparseBatchNorm2d
            module.sparse = sparse  # type: ignore[assignment]  # set on the converted instance
        elif isinstance(module, SparseBatchNorm2d):
            module.sparse = sparse
        elif isinstance(module, channels_first_ln):
            module.register_forward_hook(sparse.mask_output)
        elif isinstance(module, nn.LayerNorm):
            module.register_forward_hook(sparse.mask_output_channels_last)
        elif isinstance(module, SPATIAL + blocks):
            module.register_forward_hook(sparse.mask_output)
        elif isinstance(module, (*pointwise, *containers)):
            continue
        else:
            raise ConfigError(
                f"SparK cannot run layer '{name}' ({type(module).__name__}) sparsely: it may mix hidden and "
                "visible positions. Supported: timm ResNets (BasicBlock/Bottleneck, no attention layers) and "
                "ConvNeXts, built of Conv2d, BatchNorm2d, LayerNorm, max/avg pooling and pointwise layers"
            )
