"""Weighted averages of learnable parameters over training epochs (PromptSRC's Gaussian prompt aggregation, GPA).

After epoch e (1-based) of N the trainer adds ``w_e · θ_e`` to a running sum; after the last epoch the sum
``Σ_e w_e θ_e`` (the weights sum to 1) replaces the parameters, so the final checkpoint and the final test use the
aggregate. The running sum is training state, not a parameter: :class:`ParameterAverage` gives it a
``state_dict()`` the trainer saves in its checkpoints (``PromptTrainer.learner_state``) so a resumed run continues
the same sum.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Tuple

import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["gaussian_epoch_weights", "ParameterAverage"]


def gaussian_epoch_weights(n_epochs: int, mean: float, std: float) -> List[float]:
    """Weights ``w_e ∝ exp(-(e - mean)² / (2 std²))`` for epochs ``e = 1..n_epochs``, summing to 1.

    This is PromptSRC's normalised Gaussian density over epochs; it is computed as a softmax of the log-density,
    so a mean far outside ``1..n_epochs`` still gives finite weights (the density itself would underflow to 0/0).
    """
    if n_epochs < 1:
        raise ConfigError(f"Gaussian epoch weights need at least one epoch, got OPTIM.MAX_EPOCH={n_epochs}")
    if not std > 0:
        raise ConfigError(f"the Gaussian's standard deviation over epochs must be > 0, got {std}")
    logits = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, n_epochs + 1)]
    top = max(logits)
    w = [math.exp(v - top) for v in logits]
    total = sum(w)
    return [v / total for v in w]


class ParameterAverage:
    """A running weighted sum of named parameters, kept in fp32 on the parameters' device.

    ``add(params, weight, epoch)`` adds ``weight · p`` for every ``(name, p)``; ``copy_to(params)`` writes the sum
    into the parameters (cast to their dtype); ``epochs`` lists the epochs added so far.
    """

    def __init__(self) -> None:
        self.sum: Dict[str, Tensor] = {}
        self.epochs: List[int] = []

    def __len__(self) -> int:
        return len(self.epochs)

    @torch.no_grad()
    def add(self, params: Iterable[Tuple[str, Tensor]], weight: float, epoch: int) -> None:
        """Add ``weight · p`` for every named parameter (after ``epoch``, 1-based)."""
        if epoch in self.epochs:
            raise ValueError(f"epoch {epoch} was already added to the average")
        for name, p in params:
            term = p.detach().float() * weight
            self.sum[name] = term.clone() if name not in self.sum else self.sum[name] + term
        self.epochs.append(int(epoch))

    @torch.no_grad()
    def copy_to(self, params: Iterable[Tuple[str, Tensor]]) -> None:
        """Overwrite each named parameter with its running sum."""
        params = list(params)
        missing = [n for n, _ in params if n not in self.sum]
        if missing:
            raise ValueError(f"no running average for {', '.join(missing)}")
        for name, p in params:
            p.copy_(self.sum[name].to(device=p.device, dtype=p.dtype))

    def state_dict(self) -> Dict[str, Any]:
        """``{"sum": {name: fp32 tensor}, "epochs": [...]}`` (tensors on CPU)."""
        return {"sum": {k: v.detach().cpu().clone() for k, v in self.sum.items()}, "epochs": list(self.epochs)}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device = torch.device("cpu")) -> None:
        self.sum = {k: v.to(device=device, dtype=torch.float32) for k, v in state["sum"].items()}
        self.epochs = [int(e) for e in state["epochs"]]
