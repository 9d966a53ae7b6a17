"""The teacher contract. ``teacher=none`` (the default) keeps the tokenizer's target; a teacher is a
frozen module that maps a batch to per-token target features (B, L, D), in the same token order
as the student's tokenizer. The student's decoder must predict D features per token."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn as nn

from mae_zoo.core.types import Tokens


class Teacher(nn.Module, ABC):
    """Base of every teacher. It is never trained: the model freezes its parameters, and it stays in
    eval mode (no dropout, frozen norm statistics) whatever mode the student is in."""

    @abstractmethod
    def forward(self, batch: Any, tokens: Tokens) -> torch.Tensor:
        """Target features (B, L, D) for the student's ``tokens`` of ``batch``."""

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)
