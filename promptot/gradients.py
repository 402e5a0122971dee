"""Gradient transforms applied between backward and the optimizer step (:meth:`PromptTrainer.transform_gradients`).

:func:`project_conflicting` is ProGrad's update rule (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning",
ICCV 2023), as the reference code applies it (BeierZhu/Prompt-align,
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py: prograd_backward_and_update``), **separately for every parameter
tensor**: with g_d the gradient of the task loss (cross-entropy) and g_g the gradient of the "general knowledge" loss
(KL to the zero-shot teacher),

    g = g_d − λ (g_d · ĝ_g) ĝ_g   if cos(g_d, g_g) < 0,   ĝ_g = g_g / ‖g_g‖
    g = g_d                       otherwise.

g_g only sets a direction: it is never added to the update. λ = 1 removes the whole component of g_d that opposes
g_g; λ < 1 removes part of it.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["project_conflicting", "ProGradProjection"]


def project_conflicting(grad: Tensor, general: Tensor, lam: float = 1.0) -> Tensor:
    """ProGrad's rule for one tensor: ``grad`` (g_d) minus ``lam`` times its projection on ``general`` (g_g) when the
    two point in obtuse directions, else ``grad`` unchanged. Any shape (both the same); returns a new tensor of
    ``grad``'s shape and dtype.

    The dot products are taken in float32 (or better) whatever the gradient dtype, so fp16 prompts do not overflow
    them. A zero ``grad`` or ``general`` leaves ``grad`` unchanged (the reference divides by the zero norm, gets NaN,
    and its ``< 0`` test is then false).
    """
    return _project(grad, general, lam)[0]


def _project(grad: Tensor, general: Tensor, lam: float):
    """``(projected grad, whether the directions conflicted)``."""
    if grad.shape != general.shape:
        raise ValueError(f"gradient shapes differ: task {tuple(grad.shape)} vs general {tuple(general.shape)}")
    work = torch.promote_types(grad.dtype, torch.float32)
    d, g = grad.reshape(-1).to(work), general.reshape(-1).to(work)
    g_norm, d_norm = torch.linalg.vector_norm(g), torch.linalg.vector_norm(d)
    if g_norm == 0 or d_norm == 0:
        return grad.clone(), False
    g_hat = g / g_norm
    dot = d @ g_hat
    if dot >= 0:  # cos(g_d, g_g) >= 0: no conflict
        return grad.clone(), False
    return (d - lam * dot * g_hat).reshape(grad.shape).to(grad.dtype), True


class ProGradProjection:
    """ProGrad's projection over a list of parameters: hold the general gradients of one step (:meth:`set_general`,
    e.g. from ``torch.autograd.grad(kl, params, retain_graph=True)`` inside the loss), then :meth:`apply` rewrites
    each parameter's ``.grad`` in place with :func:`project_conflicting`.

    Args:
        lam: λ, how much of the conflicting component is removed (the reference's ``LOSS.LAMBDA``, 1.0).
    """

    def __init__(self, lam: float = 1.0) -> None:
        self.lam = float(lam)
        self._params: Sequence[Tensor] = ()
        self._general: Sequence[Optional[Tensor]] = ()

    def set_general(self, params: Sequence[Tensor], general: Sequence[Optional[Tensor]]) -> None:
        """Store g_g for ``params`` (same order); an entry None (the general loss does not reach that parameter)
        leaves its gradient unchanged."""
        if len(params) != len(general):
            raise ValueError(f"{len(params)} parameters but {len(general)} general gradients")
        self._params = list(params)
        self._general = [None if g is None else g.detach() for g in general]

    def apply(self, params: Optional[Iterable[Tensor]] = None) -> float:
        """Project the ``.grad`` of the stored parameters in place and forget g_g; returns the fraction of parameter
        tensors whose gradient was projected (conflicting). ``params`` (optional) must be the stored ones."""
        if params is not None and [id(p) for p in params] != [id(p) for p in self._params]:
            raise ValueError("ProGradProjection.apply: the parameters differ from those of set_general()")
        if not self._params:
            raise RuntimeError("ProGradProjection.apply called without set_general() in this step")
        projected = 0
        for p, g in zip(self._params, self._general):
            if p.grad is None or g is None:
                continue
            new, conflicted = _project(p.grad, g, self.lam)
            projected += int(conflicted)
            p.grad.copy_(new)
        n = len(self._params)
        self._params, self._general = (), ()
        return projected / n
