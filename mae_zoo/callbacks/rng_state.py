"""The global random number generators in the checkpoint, so that a resumed run draws what the
uninterrupted run would have drawn.

Dropout, drop-path and the GAT feature dropout draw from torch's global RNG (python's and numpy's are
saved too, for code that uses them). Masks need none of this (they come from a generator seeded by
step), and the data loaders keep their own generators in their own state (mae_zoo.data.base).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def capture() -> dict[str, Any]:
    """The states of python's, numpy's and torch's global RNGs (and CUDA's when in use), as tensors and
    plain numbers: a checkpoint holding them still loads with ``torch.load(weights_only=True)``."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Set the global RNGs to a :func:`capture`d state."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RNGState(pl.Callback):
    """Saves the global RNG states with every checkpoint and restores them when training resumes.

    They are restored at ``on_train_start``, not when the checkpoint is loaded: between the two,
    Lightning builds the model and the loaders and may run sanity validation, none of which happened
    at that point of the uninterrupted run. Every rank restores the same state, as every rank started
    from the same seed (``seed_everything``).
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pending is not None:
            restore(self.pending)
            self.pending = None
