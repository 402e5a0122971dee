"""Batched hierarchical OT head: token-level + prompt-level entropic OT (ALIGN), prompt-level only (PLOT, PLOT++).

Notation (docs/notation.md#tensors, #hierarchical-ot): B images with M views (global z_m ``[B, M, D]``, token sets
F_m ``[B, M, P, D]``), C classes with N prompts (global h_{c,n} ``[C, N, D]``, token sets G_{c,n} ``[C, N, L, D]``),
s = cosine similarity, τ = 1 / logit_scale.

Token level, for every (b, c, m, n) (ALIGN, Wang et al. NeurIPS 2023)::

    S_tok = s(F_m, G_{c,n}) ∈ R^{P×L},  T_tok = Sinkhorn_ε_tok(1 − S_tok; uniform over real tokens)
    d_tok(m, n) = <T_tok, 1 − S_tok>,   σ_tok(m, n) = <T_tok, S_tok>

Prompt level, S = s(z_m, h_{c,n}) ∈ R^{M×N}, marginals 1/M, 1/N:

- ``compat="paper"``: C = 1 − S + β d_tok, T = Sinkhorn_ε(C), logit = scale · (1 − <T, C>). It is evaluated as
  scale · (<T, S> − β <T, d_tok>), equal to the paper's form when T sums to 1 (it does, up to the marginal error) and
  exactly PLOT's scale · <T, S> at β = 0 or without tokens. Gradients flow through C (S and d_tok); the plans follow
  ``grad`` ("detach" and "envelope" coincide here: with T constant, d logit / dC = −scale·T is the envelope gradient).
- ``compat="reference"`` (official ALIGN ``trainers/mmp.py``; D1-D3, D7): C = 1 − S + σ_tok (the sign bug D1), plans
  under no-grad, logit = scale · <T, S> (D2), stopping rule "mean |Δr| < 1e-2" pooled per (image, class) over its
  M·N token problems and over all B·C problems at the prompt level. ``grad`` and ``stop`` are ignored (forced to the
  reference behaviour); ``domain``, ``eps_*``, ``max_iter`` and ``tol`` are honoured (defaults = reference values).
  Without a token level this is PLOT's head.

Why the token level often runs without autograd: in reference mode σ_tok only enters the cost of a *detached* plan,
so it carries no gradient at all (D3) — the whole token branch runs under ``no_grad`` and stores no activations. In
paper mode with ``grad != "autodiff"`` T_tok is a constant but d_tok enters the logit directly (−β<T, d_tok>), so the
contraction <T_tok, 1 − S_tok> needs a graph; the Sinkhorn loop itself still runs under no-grad, and each class chunk
is wrapped in activation checkpointing so that the saved state stays bounded by the chunk in training too.

Class chunks: classes are sorted by their text-token length (last real position) and processed ``class_chunk`` at a
time, each chunk padded only to its own maximum; the result is put back in the caller's class order. The only
C-proportional tensors are ``[B, C, M, N]`` and ``[C, N, D]``, so peak memory is set by the chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .sinkhorn import plan_entropy, sinkhorn

__all__ = ["OTHeadConfig", "HierarchicalOTHead"]


@dataclass
class OTHeadConfig:
    """Configuration of :class:`HierarchicalOTHead` (defaults = the PLOT/ALIGN reference values where they exist)."""

    eps_token: float = 0.1
    eps_prompt: float = 0.1
    beta: float = 1.0
    token_level: bool = True  # False -> prompt-level OT only (PLOT, PLOT++)
    compat: str = "paper"  # "paper" | "reference" (ALIGN official code)
    max_iter: int = 100
    stop: str = "marginal"
    tol: Optional[float] = None
    domain: str = "kernel"
    grad: str = "detach"  # gradient mode of the plans (paper compat only)
    class_chunk: int = 100  # classes per chunk: bounds peak memory whatever C is

    def __post_init__(self) -> None:
        if self.compat not in ("paper", "reference"):
            raise ValueError(f"OTHeadConfig.compat must be 'paper' or 'reference', got {self.compat!r}")
        if self.class_chunk < 1:
            raise ValueError(f"OTHeadConfig.class_chunk must be >= 1, got {self.class_chunk}")


def _finite_or_raise(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            f"HierarchicalOTHead: non-finite values in {name} of shape {tuple(x.shape)} "
            f"({int((~torch.isfinite(x)).sum())} entries)"
        )


class HierarchicalOTHead(nn.Module):
    """Logits ``[B, C]`` from multi-view image features and multi-prompt text features via (hierarchical) OT.

    See the module docstring for the math. Parameter-free; everything is computed in fp32 (float64 if the global
    features are float64) whatever the input dtype.
    """

    def __init__(self, cfg: OTHeadConfig) -> None:
        super().__init__()
        self.cfg = cfg

    # ------------------------------------------------------------------ token level
    def _token_chunk(self, imgt: Tensor, img_mask: Tensor, tt: Tensor, tm: Tensor, grad_mode: str,
                     iters: List[Tensor], errs: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """One class chunk: image tokens ``[B, M, P, D]`` (normalised), text tokens ``[Cc, N, L, D]`` (normalised).

        Returns (d_tok, σ_tok) ``[B, Cc, M, N]``; appends the Sinkhorn iteration counts to ``iters`` and the largest
        marginal error to ``errs``.
        """
        cfg = self.cfg
        # [B, M, P, D] x [Cc, N, L, D] -> [B, Cc, M, N, P, L]: one GEMM over D, rows = image tokens (reference layout).
        S_tok = torch.einsum("bmpd,cnld->bcmnpl", imgt, tt).contiguous()
        reference = cfg.compat == "reference"
        graph = torch.is_grad_enabled()
        # Without a graph, turn S into the cost in place (each full-size pass allocates ~|S| bytes otherwise).
        cost = S_tok.neg_().add_(1.0) if not graph else 1.0 - S_tok
        res = sinkhorn(
            cost,
            eps=cfg.eps_token,
            row_mask=img_mask[:, None, :, None, :],  # [B, 1, M, 1, P]
            col_mask=tm[None, :, None, :, :],  # [1, Cc, 1, N, L]
            domain=cfg.domain,
            stop="reference" if reference else cfg.stop,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            group_ndim=2,  # one reference stop decision per (image, class), pooling its M·N problems (ALIGN)
            grad=grad_mode,
        )
        T = res.plan
        mass = T.sum((-1, -2))
        d_tok = (T.mul_(cost) if not graph else T * cost).sum((-1, -2))
        sigma = mass - d_tok  # <T, S> = <T, 1> - <T, 1 - S>
        iters.append(res.n_iter.detach().reshape(-1).float())
        errs.append(res.marginal_err.detach().amax().reshape(1).float())
        return d_tok, sigma

    def _token_level(self, img_tokens: Tensor, img_mask: Optional[Tensor], txt_tokens: Tensor,
                     txt_mask: Optional[Tensor], dtype: torch.dtype, need_graph: bool, iters: List[Tensor],
                     errs: List[Tensor]) -> Tensor:
        """Token term per (b, c, m, n): d_tok (paper) or σ_tok (reference), ``[B, C, M, N]`` in caller class order."""
        cfg = self.cfg
        B, M, P, D = img_tokens.shape
        C, N, L, D2 = txt_tokens.shape
        if D != D2:
            raise ValueError(f"HierarchicalOTHead: token widths differ: img {tuple(img_tokens.shape)} vs txt "
                             f"{tuple(txt_tokens.shape)}")
        dev = img_tokens.device
        img_mask = (torch.ones(B, M, P, dtype=torch.bool, device=dev) if img_mask is None
                    else img_mask.to(dev, torch.bool).expand(B, M, P))
        txt_mask = (torch.ones(C, N, L, dtype=torch.bool, device=dev) if txt_mask is None
                    else txt_mask.to(dev, torch.bool).expand(C, N, L))
        imgt = img_tokens.to(dtype)
        imgt = F.normalize(torch.where(img_mask[..., None], imgt, torch.zeros((), dtype=dtype, device=dev)), dim=-1)
        _finite_or_raise(torch.where(img_mask[..., None], imgt, torch.zeros((), dtype=dtype, device=dev)), "img_tokens")

        # Sort classes by last real token position so each chunk pads only to its own max (the mask need not be
        # left-aligned: trimming after the last real position is exact). One host read per forward.
        pos = torch.arange(1, L + 1, device=dev)
        last = (txt_mask * pos).amax(dim=(-1, -2))  # [C]
        order = torch.argsort(last, stable=True)
        last_sorted = last[order].tolist()
        grad_mode = "detach" if cfg.compat == "reference" else cfg.grad
        reference = cfg.compat == "reference"

        chunks: List[Tensor] = []
        for s in range(0, C, cfg.class_chunk):
            idx = order[s:s + cfg.class_chunk]
            Lc = max(1, int(max(last_sorted[s:s + cfg.class_chunk])))
            tm = txt_mask[idx, :, :Lc]
            tt = txt_tokens[idx, :, :Lc].to(dtype)
            tt = torch.where(tm[..., None], tt, torch.zeros((), dtype=dtype, device=dev))
            _finite_or_raise(tt, f"txt_tokens (classes {s}..{s + len(idx) - 1} after length sort)")
            tt = F.normalize(tt, dim=-1)

            def run(imgt_: Tensor, tt_: Tensor, tm_: Tensor = tm) -> Tensor:
                d_tok, sigma = self._token_chunk(imgt_, img_mask, tt_, tm_, grad_mode, iters, errs)
                return sigma if reference else d_tok

            if need_graph and grad_mode != "autodiff":
                # Recompute the chunk in backward instead of keeping its [B, Cc, M, N, P, L] state alive until then.
                # Deterministic (same inputs, same iterations), so the recomputed plan is identical.
                # (The recomputation appends its iteration counts to a list this forward has already consumed.)
                out = checkpoint(run, imgt, tt, use_reentrant=False)
            else:
                out = run(imgt, tt)
            chunks.append(out)
        term_sorted = torch.cat(chunks, dim=1)  # [B, C, M, N] in sorted class order
        inv = torch.empty_like(order)
        inv[order] = torch.arange(C, device=dev)
        return term_sorted[:, inv]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        img_global: Tensor,
        txt_global: Tensor,
        logit_scale: Union[Tensor, float],
        img_tokens: Optional[Tensor] = None,
        img_mask: Optional[Tensor] = None,
        txt_tokens: Optional[Tensor] = None,
        txt_mask: Optional[Tensor] = None,
        log: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """Compute OT logits.

        Parameters
        ----------
        img_global : ``[B, M, D]`` view-level image features (e.g. CLS per visual prompt set); normalised inside.
        txt_global : ``[C, N, D]`` prompt-level text features (EOT per prompt); normalised inside.
        logit_scale : CLIP's ``exp(logit_scale)`` (≈ 100 = 1/τ), tensor or float.
        img_tokens, img_mask : ``[B, M, P, D]`` and bool ``[B, M, P]`` (True = real token), optional.
        txt_tokens, txt_mask : ``[C, N, L, D]`` and bool ``[C, N, L]``, optional (padded ragged token sets).
        log : also return a dict of detached scalar diagnostics (as POT's ``log=True``): ``plan_entropy`` (mean
            normalised entropy of the prompt-level plans, 1 = uniform), ``plan_max_min_ratio``, ``prompt_iters``,
            ``prompt_marginal_err`` and, with a token level, ``token_iters_{mean,max,min}`` and ``token_marginal_err``
            (marginal errors: largest row-marginal L1 error of any plan).

        Returns
        -------
        Tensor ``[B, C]`` fp32 (float64 for float64 inputs) logits; with ``log=True`` the pair (logits, diagnostics).
        """
        cfg = self.cfg
        if img_global.dim() != 3 or txt_global.dim() != 3 or img_global.shape[-1] != txt_global.shape[-1]:
            raise ValueError(f"HierarchicalOTHead: expected img_global [B,M,D] and txt_global [C,N,D], got "
                             f"{tuple(img_global.shape)} and {tuple(txt_global.shape)}")
        dtype = torch.float64 if img_global.dtype == torch.float64 else torch.float32
        _finite_or_raise(img_global, "img_global")
        _finite_or_raise(txt_global, "txt_global")
        B, M, _ = img_global.shape
        C, N, _ = txt_global.shape
        z = F.normalize(img_global.to(dtype), dim=-1)
        h = F.normalize(txt_global.to(dtype), dim=-1)
        S = torch.einsum("bmd,cnd->bcmn", z, h)  # [B, C, M, N]
        reference = cfg.compat == "reference"
        tok_iters: List[Tensor] = []
        tok_errs: List[Tensor] = []

        use_tokens = (cfg.token_level and img_tokens is not None and txt_tokens is not None
                      and (reference or cfg.beta != 0.0))
        term: Optional[Tensor] = None
        if use_tokens:
            tokens_need_grad = img_tokens.requires_grad or txt_tokens.requires_grad
            need_graph = (not reference) and torch.is_grad_enabled() and tokens_need_grad
            with torch.set_grad_enabled(need_graph):
                term = self._token_level(img_tokens, img_mask, txt_tokens, txt_mask, dtype, need_graph, tok_iters,
                                         tok_errs)

        if reference:
            cost = 1.0 - S if term is None else 1.0 - S + term  # D1: σ_tok added to a distance
            res = sinkhorn(cost, eps=cfg.eps_prompt, domain=cfg.domain, stop="reference", max_iter=cfg.max_iter,
                           tol=cfg.tol, group_ndim=None, grad="detach")  # one decision for all B·C problems
            score = (res.plan * S).sum((-1, -2))  # D2: token term absent from the score
        else:
            cost = 1.0 - S if term is None else 1.0 - S + cfg.beta * term
            res = sinkhorn(cost, eps=cfg.eps_prompt, domain=cfg.domain, stop=cfg.stop, max_iter=cfg.max_iter,
                           tol=cfg.tol, group_ndim=None, grad=cfg.grad)
            score = (res.plan * S).sum((-1, -2))
            if term is not None:
                score = score - cfg.beta * (res.plan * term).sum((-1, -2))

        scale = logit_scale.to(dtype) if isinstance(logit_scale, Tensor) else torch.tensor(logit_scale, dtype=dtype,
                                                                                              device=S.device)
        logits = scale * score
        _finite_or_raise(logits.detach(), "logits")

        if not log:
            return logits
        with torch.no_grad():
            T = res.plan.detach()
            tmax = T.amax((-1, -2))
            tmin = T.amin((-1, -2))
            diag: Dict[str, Tensor] = {
                "plan_entropy": plan_entropy(T).mean(),
                "plan_max_min_ratio": (tmax / tmin.clamp_min(torch.finfo(T.dtype).tiny)).amax(),
                "prompt_iters": res.n_iter.detach().float().amax(),
                "prompt_marginal_err": res.marginal_err.amax(),
            }
            if tok_iters:
                it = torch.cat(tok_iters)
                diag["token_iters_mean"] = it.mean()
                diag["token_iters_max"] = it.amax()
                diag["token_iters_min"] = it.amin()
                diag["token_marginal_err"] = torch.cat(tok_errs[:len(tok_iters)]).amax()
        return logits, diag
