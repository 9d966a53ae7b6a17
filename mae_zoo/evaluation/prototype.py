"""Prototypical probing (Bird-MAE, Rauch et al. 2025; their ``PPNet`` head after ProtoPNet/AudioProtoPNet).

The encoder is frozen. Every class owns ``prototypes_per_class`` (J) learnable vectors of the
encoder width; each is compared by cosine similarity with **every patch token** (ReLU'd), the
maximum over positions gives one activation per prototype, and a **non-negative** linear layer that
lets each class read only its own J prototypes maps activations to logits. Loss: cross-entropy
(single-label data; Bird-MAE trains multi-label BirdSet with an asymmetric loss) plus the
orthogonality penalty ``||P_c P_c^T - I||_F / (C * J * J)`` over the L2-normalised prototypes P_c of
each class (weight 1, as Bird-MAE adds it unweighted).

Defaults follow the Bird-MAE code and configs: J = 20 (HSN), prototypes initialised U[0, 1),
similarity = cosine with two epsilon (1e-4) channels appended to tokens and prototypes and divided by
1.01, top-k = 1 (plain max), last layer class-specific with weights 1.0 and bias -2.0, AdamW with
prototype LR 0.04 and last-layer LR 4e-4 (weight decay 1e-4 on the last layer), cosine schedule with
6.7% linear warm-up, batch 128, 30 epochs. Option ``focal_similarity`` (patch tokens minus the cls
token, a Bird-MAE config switch) is off by default. Not carried over (they are off or marked
removable in Bird-MAE's configs, or need a 2-D map): the 2x bilinear upsampling of the token map,
per-frequency-row gates, subtractive margins, prototype pushing and pruning.

Token features come from ``model.embed_tokens(batch)`` (every modality has it); with
``focal_similarity`` from the modality's encoder on all tokens, ``model.encoder(model.tokenize(batch).inputs)``,
whose ``num_prefix`` leading (cls) rows are dropped. Positions are only ever reduced by a max, so any token
layout (image grid, spectrogram, video tubes, point groups) works. They are computed once with the
frozen encoder and cached in memory (float16) when they fit ``cache_max_gb``, else recomputed each
epoch. Accuracies are in percent, like the other evaluators.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.evaluation.base import EvalData, Evaluator, accuracy_metrics, autocast, resolve_runtime, to_device


# ----------------------------------------------------------------------------------- the head
class ClassSpecificNonNegativeLinear(nn.Module):
    """Logit of class c = sum_j relu(w[c, j]) * a[c*J + j] + b[c]: each class reads only its own J
    prototypes, with non-negative weights (Bird-MAE's ``LinearLayerWithoutNegativeConnections``)."""

    def __init__(self, num_classes: int, per_class: int, init_weight: float = 1.0, init_bias: float | None = -2.0):
        super().__init__()
        self.num_classes, self.per_class = num_classes, per_class
        self.weight = nn.Parameter(torch.full((num_classes, per_class), float(init_weight)))
        self.bias = nn.Parameter(torch.full((num_classes,), float(init_bias))) if init_bias is not None else None

    def effective_weight(self) -> torch.Tensor:
        return torch.relu(self.weight)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        a = activations.view(activations.shape[0], self.num_classes, self.per_class)
        logits = torch.einsum("bcj,cj->bc", a, self.effective_weight())
        return logits + self.bias if self.bias is not None else logits


class NonNegativeLinear(nn.Module):
    """Every class reads every prototype, through relu'd weights (own class 1, others 0 at start)."""

    def __init__(self, num_classes: int, per_class: int, init_weight: float = 1.0, init_bias: float | None = -2.0):
        super().__init__()
        identity = torch.arange(num_classes * per_class) // per_class
        weight = torch.zeros(num_classes, num_classes * per_class)
        weight[identity, torch.arange(num_classes * per_class)] = float(init_weight)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.full((num_classes,), float(init_bias))) if init_bias is not None else None

    def effective_weight(self) -> torch.Tensor:
        return torch.relu(self.weight)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return F.linear(activations, self.effective_weight(), self.bias)


class PrototypeHead(nn.Module):
    """Per-class prototypes on patch tokens: (B, L, D) tokens -> (B, C) logits.

    ``similarities(tokens)`` is (B, C*J, L) (ReLU'd cosine / 1.01), ``activations(tokens)`` its max
    (mean of the top-k while training, k = ``topk``) over positions, (B, C*J); prototype ``i``
    belongs to class ``i // J``.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        prototypes_per_class: int = 20,
        topk: int = 1,
        class_specific: bool = True,
        init_weight: float = 1.0,
        init_bias: float | None = -2.0,
        eps: float = 1e-4,
        n_eps_channels: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or prototypes_per_class < 1:
            raise ConfigError(
                f"prototype probe needs >= 1 class and prototype per class, "
                f"got {num_classes} and {prototypes_per_class}"
            )
        self.dim, self.num_classes, self.per_class = dim, num_classes, prototypes_per_class
        self.topk, self.eps, self.n_eps_channels = int(topk), float(eps), int(n_eps_channels)
        self.prototypes = nn.Parameter(torch.rand(num_classes * prototypes_per_class, dim, generator=generator))
        layer = ClassSpecificNonNegativeLinear if class_specific else NonNegativeLinear
        self.last_layer = layer(num_classes, prototypes_per_class, init_weight, init_bias)

    @property
    def num_prototypes(self) -> int:
        return self.num_classes * self.per_class

    def _with_eps(self, x: torch.Tensor) -> torch.Tensor:
        """Append ``n_eps_channels`` constant eps channels (keeps all-zero vectors well defined)."""
        if self.n_eps_channels == 0:
            return x
        pad = x.new_full((*x.shape[:-1], self.n_eps_channels), self.eps)
        return torch.cat([x, pad], dim=-1)

    def similarities(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self._with_eps(tokens.float())
        x = x / torch.sqrt((x * x).sum(-1, keepdim=True) + self.eps)
        p = self._with_eps(self.prototypes)
        p = p / (torch.sqrt((p * p).sum(-1, keepdim=True) + self.eps) + self.eps)
        cos = torch.einsum("bld,pd->bpl", x, p) / 1.01
        return torch.relu(cos)

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        sims = self.similarities(tokens)
        k = min(self.topk, sims.shape[-1]) if self.training else 1
        if k == 1:
            return sims.amax(dim=-1)
        return sims.topk(k, dim=-1).values.mean(dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.activations(tokens))

    def orthogonality(self) -> torch.Tensor:
        """(C, J, J): Gram matrix of each class's L2-normalised prototypes minus the identity."""
        p = F.normalize(self.prototypes, dim=-1).view(self.num_classes, self.per_class, self.dim)
        eye = torch.eye(self.per_class, device=p.device, dtype=p.dtype)
        return p @ p.transpose(1, 2) - eye

    def orthogonality_penalty(self) -> torch.Tensor:
        """Bird-MAE's normalised penalty: Frobenius norm of all (C, J, J) deviations / their count."""
        ortho = self.orthogonality()
        return torch.linalg.vector_norm(ortho) / ortho.numel()


# ----------------------------------------------------------------------------------- token features
def token_features(model: MaskedAutoencoder, batch: Any, focal: bool = False) -> torch.Tensor:
    """(B, L, D) features of every token of the unmasked input from the frozen encoder.

    Without ``focal``: ``model.embed_tokens(batch)``. With it: every token minus the cls row
    (Bird-MAE's ``focal_similarity``); ``embed_tokens`` drops that row, so the encoder runs here.
    """
    if not focal:
        return model.embed_tokens(batch)
    encoded = model.encoder(model.tokenize(batch).inputs)
    if encoded.num_prefix == 0:
        raise ConfigError("focal_similarity needs an encoder with a cls token (encoder.num_prefix > 0)")
    return encoded.latent[:, encoded.num_prefix :] - encoded.latent[:, :1]


# ----------------------------------------------------------------------------------- the evaluator
class HeadSettings(TypedDict):
    """The :class:`PrototypeHead` keyword arguments an evaluator's settings fix."""

    prototypes_per_class: int
    topk: int
    class_specific: bool
    init_weight: float
    init_bias: float | None


class PrototypeEvaluator(Evaluator):
    """Train a :class:`PrototypeHead` on the frozen encoder's patch tokens; report val top-1 (percent).

    Token features of both splits are extracted once (no augmentation, like the linear probe) in
    batches of ``feature_batch_size`` (null: the data's) and cached in float16 when they fit
    ``cache_max_gb``; the head then trains on shuffled batches of ``batch_size``. Beyond the cache
    size the encoder runs again every epoch and the head trains on the loader's batches.
    ``debug=smoke`` caps ``epochs`` and the loaders' batches through :func:`mae_zoo.eval.apply_limits`.
    """

    name = "prototype"
    epochs: int

    def __init__(
        self,
        prototypes_per_class: int = 20,
        ortho_weight: float = 1.0,
        topk: int = 1,
        class_specific: bool = True,
        last_layer_init: float = 1.0,
        last_layer_bias: float | None = -2.0,
        focal_similarity: bool = False,
        epochs: int = 30,
        batch_size: int = 128,
        feature_batch_size: int | None = None,
        prototype_lr: float = 0.04,
        last_layer_lr: float = 4e-4,
        prototype_weight_decay: float = 0.0,
        last_layer_weight_decay: float = 1e-4,
        warmup_ratio: float = 0.067,
        num_classes: int | None = None,
        cache_max_gb: float = 2.0,
        device: str = "auto",
        precision: str = "auto",
        seed: int = 0,
    ) -> None:
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"eval.epochs and eval.batch_size must be positive, got {epochs} and {batch_size}")
        if prototypes_per_class < 1 or topk < 1:
            raise ConfigError(
                f"eval.prototypes_per_class and eval.topk must be >= 1, got {prototypes_per_class} and {topk}"
            )
        self.head_kwargs = HeadSettings(
            prototypes_per_class=prototypes_per_class,
            topk=topk,
            class_specific=class_specific,
            init_weight=last_layer_init,
            init_bias=last_layer_bias,
        )
        self.ortho_weight = float(ortho_weight)
        self.focal = bool(focal_similarity)
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.feature_batch_size = feature_batch_size
        self.prototype_lr, self.last_layer_lr = float(prototype_lr), float(last_layer_lr)
        self.prototype_wd, self.last_layer_wd = float(prototype_weight_decay), float(last_layer_weight_decay)
        self.warmup_ratio = float(warmup_ratio)
        self.num_classes = num_classes
        self.cache_max_gb = float(cache_max_gb)
        self.device, self.precision, self.seed = device, precision, int(seed)

    # ------------------------------------------------------------------------------- data
    @torch.no_grad()
    def _tokens(
        self, model: MaskedAutoencoder, batch: Any, device: torch.device, precision: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        labels = MaskedAutoencoder.batch_labels(batch)
        if labels is None:
            raise ConfigError("eval=prototype needs labelled batches ((input, label) tuples or dicts with 'label')")
        with autocast(precision, device):
            tokens = token_features(model, to_device(batch, device), focal=self.focal)
        if tokens.dim() != 3:
            raise ValueError(f"token features must be (B, L, D), got {tuple(tokens.shape)}")
        return tokens, torch.as_tensor(labels).long().to(device)

    def _extract(
        self, model: MaskedAutoencoder, loader: Any, device: torch.device, precision: str
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(N, L, D) float16 tokens and (N,) labels of the whole loader, or None beyond ``cache_max_gb``."""
        tokens_list, labels_list = [], []
        for i, batch in enumerate(loader):
            tokens, labels = self._tokens(model, batch, device, precision)
            if i == 0 and tokens[0].numel() * 2 * tokens.shape[0] * len(loader) > self.cache_max_gb * 2**30:
                return None
            tokens_list.append(tokens.to(torch.float16))
            labels_list.append(labels)
        if not tokens_list:
            raise ConfigError("the evaluation loader gave no batches")
        return torch.cat(tokens_list), torch.cat(labels_list)

    def _batches(
        self,
        model: MaskedAutoencoder,
        loader: Any,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        device: torch.device,
        precision: str,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Cached: mini-batches of ``batch_size`` (shuffled with ``generator``); else the loader's batches."""
        if cache is not None:
            tokens, labels = cache
            n = labels.shape[0]
            order = torch.randperm(n, generator=generator).to(labels.device) if generator is not None else None
            for i in range(0, n, self.batch_size):
                idx = order[i : i + self.batch_size] if order is not None else slice(i, i + self.batch_size)
                yield tokens[idx], labels[idx]
            return
        for batch in loader:
            yield self._tokens(model, batch, device, precision)

    # ------------------------------------------------------------------------------- run
    def __call__(self, model: MaskedAutoencoder, datamodule: EvalData, run_dir: Path) -> dict[str, Any]:
        start = time.time()
        device, precision = resolve_runtime(self.device, self.precision)
        model = model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        train_loader, val_loader = datamodule.feature_dataloaders(self.feature_batch_size)
        train_cache = self._extract(model, train_loader, device, precision)
        val_cache = self._extract(model, val_loader, device, precision) if train_cache is not None else None

        if self.num_classes is not None:
            num_classes = int(self.num_classes)
        else:
            seen = (
                train_cache[1]
                if train_cache is not None
                else torch.cat([torch.as_tensor(MaskedAutoencoder.batch_labels(b)) for b in train_loader])
            )
            num_classes = self.class_count(datamodule, seen.cpu())
        first_tokens, _ = next(self._batches(model, val_loader, val_cache, device, precision))
        generator = torch.Generator().manual_seed(self.seed)
        head = PrototypeHead(first_tokens.shape[-1], num_classes, generator=generator, **self.head_kwargs).to(device)

        groups = [
            {"params": [head.prototypes], "lr": self.prototype_lr, "weight_decay": self.prototype_wd},
            {"params": [head.last_layer.weight], "lr": self.last_layer_lr, "weight_decay": self.last_layer_wd},
        ]
        if head.last_layer.bias is not None:
            groups.append({"params": [head.last_layer.bias], "lr": self.last_layer_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups)
        if train_cache is not None:
            steps_per_epoch = math.ceil(len(train_cache[1]) / self.batch_size)
        else:
            steps_per_epoch = len(train_loader)
        total = max(1, steps_per_epoch * self.epochs)
        warmup = int(total * self.warmup_ratio)

        def schedule(step: int) -> float:  # linear warm-up, then half-cosine to 0, per step
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        shuffle = torch.Generator().manual_seed(self.seed + 1)
        ce_sum = ortho_sum = 0.0
        seen_samples = steps = 0
        for _ in range(self.epochs):
            head.train()
            ce_sum = ortho_sum = 0.0
            seen_samples = 0
            for tokens, labels in self._batches(model, train_loader, train_cache, device, precision, shuffle):
                keep = labels >= 0
                tokens, labels = tokens[keep].float(), labels[keep]
                if labels.numel() == 0:
                    continue
                ce = F.cross_entropy(head(tokens), labels)
                ortho = head.orthogonality_penalty()
                loss = ce + self.ortho_weight * ortho
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                steps += 1
                ce_sum += float(ce.detach()) * labels.numel()
                ortho_sum += float(ortho.detach()) * labels.numel()
                seen_samples += labels.numel()
        if seen_samples == 0:
            raise ConfigError("eval=prototype: no labelled training samples")
        if not math.isfinite(ce_sum):
            raise FloatingPointError("prototype probe diverged; lower eval.prototype_lr / eval.last_layer_lr")

        head.eval()
        logits, targets = [], []
        with torch.no_grad():
            for tokens, labels in self._batches(model, val_loader, val_cache, device, precision):
                keep = labels >= 0
                logits.append(head(tokens[keep].float()).cpu())
                targets.append(labels[keep].cpu())
        val_logits, val_labels = torch.cat(logits), torch.cat(targets)
        if val_labels.numel() == 0:
            raise ConfigError("eval=prototype: no labelled validation samples")
        prefix = f"eval_{self.name}"
        metrics: dict[str, Any] = accuracy_metrics(prefix, val_logits, val_labels, num_classes)
        metrics.update(
            {
                f"{prefix}/final_train_loss": ce_sum / seen_samples,
                f"{prefix}/ortho_penalty": ortho_sum / seen_samples,
                f"{prefix}/prototypes_per_class": head.per_class,
                f"{prefix}/num_classes": num_classes,
                f"{prefix}/feature_dim": head.dim,
                f"{prefix}/num_tokens": int(first_tokens.shape[1]),
                f"{prefix}/epochs": self.epochs,
                f"{prefix}/steps": steps,
                f"{prefix}/num_val": int(val_labels.numel()),
                f"{prefix}/cached_features": train_cache is not None,
                f"{prefix}/precision": precision,
                f"{prefix}/head_wall_s": round(time.time() - start, 2),
            }
        )
        return metrics
