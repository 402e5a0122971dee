"""Loop baseline for the hierarchical OT head, structured like the official ALIGN code (``trainers/mmp.py``).

Written for this project from a description of that code (docs/notation.md#sinkhorn, #align-reference; no reference
code copied). It is deliberately the *slow* structure:

- a Python double loop over images b and classes c; per pair one einsum ``[M, P, D] x [N, L_c, D] -> [M·N, P, L_c]``
  on the class's own (unpadded) token length;
- one probability-domain Sinkhorn call per pair, ``K = exp(-cost/ε)`` unshifted, with the reference stopping rule
  ``mean |r - r_prev| < tol`` read on the host (``.item()``) after every iteration;
- the prompt level as one Sinkhorn call over all B·C problems (one pooled stop decision).

It is used by ``bench/ot_head.py`` (speed and equivalence) and by ``tests/test_ot_hierarchical.py`` (equivalence in
both compat modes; paper mode uses ``stop="fixed"`` so that the loop needs no per-problem stop logic).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def plain_sinkhorn(K: Tensor, u: Tensor, v: Tensor, max_iter: int = 100, tol: float = 1e-2,
                   stop: str = "reference") -> Tuple[Tensor, int]:
    """Reference Sinkhorn on a batch of kernels ``K [G, n, m]``, marginals ``u [G, n]``, ``v [G, m]``.

    ``stop="reference"``: r = 1, c = 1; repeat: r = u / (K c); c = v / (Kᵀ r); err = mean |r - r_prev| over the whole
    batch; break when err < tol (host sync each iteration). ``stop="fixed"``: exactly ``max_iter`` iterations.
    Returns the plan ``diag(r) K diag(c)`` and the number of iterations run.
    """
    r = torch.ones_like(u)
    c = torch.ones_like(v)
    it = 0
    for it in range(1, max_iter + 1):
        r0 = r
        r = u / (K @ c.unsqueeze(-1)).squeeze(-1)
        c = v / (K.transpose(-1, -2) @ r.unsqueeze(-1)).squeeze(-1)
        if stop == "reference":
            err = (r - r0).abs().mean()
            if err.item() < tol:
                break
    return r.unsqueeze(-1) * K * c.unsqueeze(-2), it


def loop_head_logits(
    img_global: Tensor,
    txt_global: Tensor,
    logit_scale: float,
    img_tokens: Tensor | None,
    txt_tokens: Sequence[Tensor] | None,
    compat: str = "reference",
    eps_token: float = 0.1,
    eps_prompt: float = 0.1,
    beta: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-2,
    stop: str = "reference",
) -> Tuple[Tensor, List[int]]:
    """Per-(image, class) loop implementation of the hierarchical OT head.

    Shapes: ``img_global [B, M, D]``, ``txt_global [C, N, D]``, ``img_tokens [B, M, P, D]`` (all real), and
    ``txt_tokens`` a list of C tensors ``[N, L_c, D]`` (ragged, all real). ``compat="reference"``: cost
    1 − S + σ_tok, logit = scale·<T, S>; ``compat="paper"``: cost 1 − S + β·d_tok, logit = scale·(<T, S> −
    β<T, d_tok>). Plans are computed under no-grad. Returns logits ``[B, C]`` and the token-level iteration count of
    every pair.
    """
    B, M, D = img_global.shape
    C, N, _ = txt_global.shape
    dt = img_global.dtype
    dev = img_global.device
    z = F.normalize(img_global, dim=-1)
    h = F.normalize(txt_global, dim=-1)
    S = torch.einsum("bmd,cnd->bcmn", z, h)
    iters: List[int] = []
    term = None
    if img_tokens is not None and txt_tokens is not None:
        imgt = F.normalize(img_tokens, dim=-1)
        term = torch.zeros(B, C, M, N, dtype=dt, device=dev)
        for b in range(B):
            for c in range(C):
                tt = F.normalize(txt_tokens[c], dim=-1)  # [N, L_c, D]
                L = tt.shape[1]
                P = imgt.shape[2]
                sim = torch.einsum("mpd,nld->mnpl", imgt[b], tt).reshape(M * N, P, L)
                cost = 1.0 - sim
                with torch.no_grad():
                    K = torch.exp(-cost / eps_token)
                    u = torch.full((M * N, P), 1.0 / P, dtype=dt, device=dev)
                    v = torch.full((M * N, L), 1.0 / L, dtype=dt, device=dev)
                    T, it = plain_sinkhorn(K, u, v, max_iter, tol, stop)
                iters.append(it)
                val = (T * sim).sum((-1, -2)) if compat == "reference" else (T * cost).sum((-1, -2))
                term[b, c] = val.reshape(M, N)
    if compat == "reference":
        cost = 1.0 - S if term is None else 1.0 - S + term
    else:
        cost = 1.0 - S if term is None else 1.0 - S + beta * term
    with torch.no_grad():
        K = torch.exp(-cost / eps_prompt).reshape(B * C, M, N)
        u = torch.full((B * C, M), 1.0 / M, dtype=dt, device=dev)
        v = torch.full((B * C, N), 1.0 / N, dtype=dt, device=dev)
        T, _ = plain_sinkhorn(K, u, v, max_iter, tol, stop)
        T = T.reshape(B, C, M, N)
    score = (T * S).sum((-1, -2))
    if compat == "paper" and term is not None:
        score = score - beta * (T * term).sum((-1, -2))
    return logit_scale * score, iters
