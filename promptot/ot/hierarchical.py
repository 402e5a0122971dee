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
contraction <T_tok, 1 − S_tok> needs a graph; the Sinkhorn loop itself still runs under no-grad, and each tile is
wrapped in activation checkpointing so that the saved state stays bounded by the tile in training too.

Tiles: classes are sorted by their text-token length (last real position) and the token level runs tile by tile,
a tile being ``Bt`` images × ``Ct`` consecutive (sorted) classes padded only to the tile's own longest class; the
result is put back in the caller's class order. A tile holds whole (image, class) groups — all M views and N
prompts — because the reference stopping rule pools its decision over them; the prompt level pools over the whole
batch and is not tiled. Two tilings (``OTHeadConfig.tile``):

- ``"cache"`` (default on CPU): tiles sized so that the similarity tile and its two companions (the same regrouped
  per problem, the kernel) fit a cache budget (:func:`cache_budget_bytes`: L2 plus a share of L3 per core, times the
  threads in use), with at least ``_MIN_GEMM_COLS`` text tokens per GEMM so the similarity GEMM keeps its speed. All
  Sinkhorn iterations of a tile run before the next tile starts, so every pass after the GEMM reads cache, not
  memory. Without a graph and in the kernel domain a tile is solved by
  :func:`~promptot.ot.sinkhorn.similarity_sinkhorn` (kernel ``2^Z`` straight from the similarities in base-2 units,
  no cost or plan tensors, matvecs without temporaries, full-size and row-vector buffers reused by every tile: on
  CPU a fresh output costs more than the operation that fills it). Why: the similarity GEMM is the floor of this
  computation, and a batched head that streams a ``[B, C, M, N, P, L]`` tensor through memory a dozen times ends up
  slower than a per-pair loop whose working set stays in cache.
- ``"batched"`` (default on other devices): ``class_chunk`` classes × all images per tile through :func:`sinkhorn`,
  sized for device memory, where one large launch per step matters more than cache reuse.

Either way the only C-proportional tensors are ``[B, C, M, N]`` and ``[C, N]``-sized ones, so peak memory is set by
the tile.

Text tokens come as one ``[C, N, L, D]`` tensor padded to the longest class (sorted and gathered here), or as a
:class:`TokenPieces`: pieces of whole classes ``[C_i, N, L_i, D]``, each cut at its own length, in the order the caller
chose (length-sorted), whose tiles are views (:func:`promptot.model.encode_text_by_class` produces them). The token
level alone is :meth:`HierarchicalOTHead.token_term`; since the token problems of an (image, class) pair do not involve
other classes, a model may compute it class chunk by class chunk and pass the joined :class:`TokenTerm` to
``forward`` (ALIGN does, with each chunk's text pass and token level in one checkpoint:
:meth:`promptot.heads.OTPromptModel.ot_by_class`), so that no ``[C, N, L, D]`` tensor exists at all.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .sinkhorn import RowSide, col_side, plan_entropy, row_side, similarity_sinkhorn, sinkhorn

__all__ = ["OTHeadConfig", "HierarchicalOTHead", "TokenPieces", "TokenTerm", "cache_budget_bytes"]

TILINGS = ("auto", "cache", "batched")
# Cache sizes assumed when the OS does not report them: a 1 MiB L2 per core and a 2 MiB share of the last-level cache
# per core (current x86/ARM server and desktop cores have 0.5-2 MiB of L2 and 1.5-4 MiB of L3 per core).
DEFAULT_L2_BYTES = 1 << 20
DEFAULT_L3_SHARE_BYTES = 2 << 20
# The L3 share of a core is L3 / (cores sharing it), counting at least this many: server L3s are shared by 8 or more
# cores (an AMD CCX has 8), and in a virtual machine the OS lists only the machine's own vCPUs as sharing it.
_L3_MIN_SHARING = 8
# A cache tile holds at least this many text tokens (GEMM columns): narrower GEMMs lose speed (one image gives
# M·P ≈ 800 rows; measured on a 2-core EPYC, sgemm 792 × k × 512 runs at about half speed for k = 32).
_MIN_GEMM_COLS = 128
# A cache tile already holding 1/_SPLIT_AT_LENGTH of the budget ends where the class length grows: padding all its
# classes to a longer length costs more than the ~100 small operations of one more tile. (B = 4, C = 100, lengths
# 4-12 on a 2-core EPYC: 18% padding and 228 ms without this rule, 5% and 210 ms with it, 0% and 220 ms when
# splitting at every length.)
_SPLIT_AT_LENGTH = 2
# Full-size tensors of a cache tile: similarities·log₂e/ε (the GEMM output), the same regrouped per problem, the kernel.
_TILE_BUFFERS = 3
_LOG2E = 1.0 / math.log(2.0)


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def _cpu_count(cpu_list: str) -> int:
    """Number of CPUs in a sysfs list such as ``0-3,8-11``."""
    n = 0
    for part in cpu_list.strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


@functools.lru_cache(maxsize=None)
def _cache_sizes() -> Tuple[int, int]:
    """(L2 bytes per core, L3 bytes per core) from sysfs (Linux), else the defaults above."""
    l2, l3_share = DEFAULT_L2_BYTES, DEFAULT_L3_SHARE_BYTES
    try:
        for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
            level = (d / "level").read_text().strip()
            if (d / "type").read_text().strip() not in ("Unified", "Data"):
                continue
            size = _parse_size((d / "size").read_text())
            if level == "2":
                l2 = size
            elif level == "3":
                sharing = _cpu_count((d / "shared_cpu_list").read_text())
                l3_share = size // max(_L3_MIN_SHARING, sharing)
    except (OSError, ValueError):
        pass
    return l2, l3_share


def cache_budget_bytes() -> int:
    """Bytes a CPU token tile may occupy: ``threads × (L2 + L3 share)`` per core, from the OS (sysfs) when it says.

    Every full-size operation of a tile is split across the ``torch.get_num_threads()`` intra-op threads, each
    working on its share in its own core's caches. The L3 share counts because a tile's passes run from L3 at close
    to L2 speed (only spilling to memory is slow), while a tile sized to L2 alone pays the fixed cost of its ~100
    small operations too often: on a 2-core EPYC VM (L2 512 KiB, L3 32 MiB) the head was about 1.5x its GEMM with
    1 MiB tiles, 1.2x with 4-16 MiB tiles, and 1.5x again with 32 MiB ones. ``OTHeadConfig.cache_bytes`` overrides
    it; the defaults used when the OS says nothing are :data:`DEFAULT_L2_BYTES` and :data:`DEFAULT_L3_SHARE_BYTES`.
    """
    l2, l3_share = _cache_sizes()
    return max(1, torch.get_num_threads()) * (l2 + l3_share)


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
    class_chunk: int = 100  # classes per tile at most: bounds peak memory whatever C is
    # Token-level tiling (module docstring): "auto" = "cache" on CPU, "batched" elsewhere. The sizes below override
    # the automatic choice (tests use them to check that results do not depend on the tiling).
    tile: str = "auto"
    tile_images: Optional[int] = None  # images per cache tile
    tile_classes: Optional[int] = None  # classes per cache tile (capped by class_chunk)
    cache_bytes: Optional[int] = None  # cache budget per tile; default cache_budget_bytes()

    def __post_init__(self) -> None:
        if self.compat not in ("paper", "reference"):
            raise ValueError(f"OTHeadConfig.compat must be 'paper' or 'reference', got {self.compat!r}")
        if self.class_chunk < 1:
            raise ValueError(f"OTHeadConfig.class_chunk must be >= 1, got {self.class_chunk}")
        if self.tile not in TILINGS:
            raise ValueError(f"OTHeadConfig.tile must be one of {TILINGS}, got {self.tile!r}")
        for name in ("tile_images", "tile_classes", "cache_bytes"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"OTHeadConfig.{name} must be >= 1 or None, got {v}")


def _finite_or_raise(x: Tensor, name: str) -> None:
    # One reduction in the common case; the exact elementwise test only when the sum is not finite.
    # (A sum can also overflow for huge finite entries, e.g. in fp16; the exact test then decides.)
    if bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all()):
        return
    raise FloatingPointError(
        f"HierarchicalOTHead: non-finite values in {name} of shape {tuple(x.shape)} "
        f"({int((~torch.isfinite(x)).sum())} entries)"
    )


class _GatherPieces(torch.autograd.Function):
    """Text tokens ``x`` ``[C, N, L, D]`` of the classes ``order`` cut into consecutive pieces of ``sizes`` classes,
    piece i trimmed to its ``lengths[i]`` first positions: ``[sizes[i], N, lengths[i], D]``, separate allocations.
    Backward writes every piece's gradient into one zero tensor of ``x``'s shape (autograd's index_select + split
    would hold the concatenated gradient and two full-size scatter buffers at once, and a gather per tile one
    full-size buffer per tile)."""

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, sizes: List[int], lengths: List[int]  # type: ignore[override]
                ) -> Tuple[Tensor, ...]:
        ctx.save_for_backward(order)
        ctx.sizes, ctx.lengths, ctx.shape = sizes, lengths, x.shape
        return tuple(x[:, :, :n].index_select(0, idx) for idx, n in zip(order.split(sizes), lengths))

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tuple[Optional[Tensor], None, None, None]:  # type: ignore[override]
        (order,) = ctx.saved_tensors
        g = grads[0].new_zeros(ctx.shape)
        for idx, n, gp in zip(order.split(ctx.sizes), ctx.lengths, grads):
            g[:, :, :n].index_copy_(0, idx, gp)
        return g, None, None, None


class TokenPieces:
    """Text token sets delivered in pieces of whole classes, each piece cut at its own length (what
    :func:`promptot.model.encode_text_by_class` returns): an alternative to a ``[C, N, L, D]`` tensor padded to the
    longest class.

    ``pieces[i]``: ``[C_i, N, L_i, D]``; ``masks[i]``: bool ``[C_i, N or 1, L_i]`` (True = real token), or None
    (all real); ``order``: LongTensor ``[C]``, the class of each row of the pieces taken one after the other. The
    head keeps this order (pieces are meant to come length-sorted) and cuts its tiles inside pieces, as views: in
    training, a piece's tiles write their gradients into one buffer per piece.
    """

    def __init__(self, pieces: Sequence[Tensor], masks: Sequence[Optional[Tensor]], order: Tensor) -> None:
        self.pieces, self.masks, self.order = list(pieces), list(masks), order
        if not self.pieces or len(self.masks) != len(self.pieces):
            raise ValueError(f"TokenPieces: {len(self.pieces)} pieces and {len(self.masks)} masks; give one mask (or "
                             f"None) per piece, and at least one piece")
        n, d = self.pieces[0].shape[1], self.pieces[0].shape[3]
        for i, (p, m) in enumerate(zip(self.pieces, self.masks)):
            if p.dim() != 4 or p.shape[1] != n or p.shape[3] != d:
                raise ValueError(f"TokenPieces: piece {i} has shape {tuple(p.shape)}; every piece must be [C_i, {n}, "
                                 f"L_i, {d}]")
            if m is not None and (m.dim() != 3 or m.shape[0] != p.shape[0] or m.shape[1] not in (1, n)
                                  or m.shape[2] != p.shape[2]):
                raise ValueError(f"TokenPieces: mask {i} has shape {tuple(m.shape)} for a piece of shape "
                                 f"{tuple(p.shape)}; expected [{p.shape[0]}, 1 or {n}, {p.shape[2]}]")
        if order.shape != (sum(p.shape[0] for p in self.pieces),):
            raise ValueError(f"TokenPieces: order has shape {tuple(order.shape)}, expected one class index per piece "
                             f"row ({sum(p.shape[0] for p in self.pieces)})")

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """``(C, N, max L_i, D)``: the shape of :meth:`dense`."""
        p = self.pieces[0]
        return (int(self.order.shape[0]), p.shape[1], max(q.shape[2] for q in self.pieces), p.shape[3])

    @property
    def requires_grad(self) -> bool:
        return any(p.requires_grad for p in self.pieces)

    @property
    def bounds(self) -> List[int]:
        """Row offsets of the pieces: piece i holds rows ``bounds[i] .. bounds[i + 1] - 1``."""
        out = [0]
        for p in self.pieces:
            out.append(out[-1] + p.shape[0])
        return out

    def sorted_mask(self) -> Tensor:
        """``[C, N, max L_i]`` bool, rows in piece order, False on each piece's padding."""
        C, N, L, _ = self.shape
        dev = self.pieces[0].device
        out = torch.zeros(C, N, L, dtype=torch.bool, device=dev)
        for (a, b), p, m in zip(zip(self.bounds, self.bounds[1:]), self.pieces, self.masks):
            out[a:b, :, :p.shape[2]] = True if m is None else m.to(dev, torch.bool)
        return out

    def dense(self) -> Tuple[Tensor, Tensor]:
        """``([C, N, L, D] tokens, [C, N, L] mask)`` in class order, zero-padded (for tests and other heads)."""
        C, N, L, D = self.shape
        sorted_tokens = torch.cat([F.pad(p, (0, 0, 0, L - p.shape[2])) for p in self.pieces])
        inv = torch.empty_like(self.order)
        inv[self.order] = torch.arange(C, device=self.order.device)
        return sorted_tokens[inv], self.sorted_mask()[inv]


class _SliceTiles(torch.autograd.Function):
    """Tiles of one piece ``x [Cp, N, Lp, D]`` as views ``x[a:b, :, :n]`` (``spans``: ``(a, b, n)``). Backward writes
    the tiles' gradients into one zero tensor of ``x``'s shape (autograd's slicing would allocate one per tile)."""

    @staticmethod
    def forward(ctx, x: Tensor, spans: List[Tuple[int, int, int]]) -> Tuple[Tensor, ...]:  # type: ignore[override]
        ctx.spans, ctx.shape = spans, x.shape
        return tuple(x[a:b, :, :n] for a, b, n in spans)

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]) -> Tuple[Optional[Tensor], None]:  # type: ignore[override]
        g = None
        for (a, b, n), gp in zip(ctx.spans, grads):
            if gp is not None:
                g = gp.new_zeros(ctx.shape) if g is None else g
                g[a:b, :, :n] = gp
        return g, None


class TokenTerm(NamedTuple):
    """The token level of :class:`HierarchicalOTHead` (:meth:`HierarchicalOTHead.token_term`): ``term [B, C, M, N]``
    and the Sinkhorn iteration counts and marginal errors of its problems (1-D, detached)."""

    term: Tensor
    iters: Tensor
    errs: Tensor

    @staticmethod
    def cat(parts: Sequence["TokenTerm"], order: Optional[Tensor] = None) -> "TokenTerm":
        """Terms of class chunks joined along C; ``order[i]``: the class of joined column i (default: as joined)."""
        term = torch.cat([p.term for p in parts], dim=1)
        if order is not None:
            inv = torch.empty_like(order)
            inv[order] = torch.arange(order.numel(), device=order.device)
            term = term.index_select(1, inv.to(term.device))
        return TokenTerm(term, torch.cat([p.iters for p in parts]), torch.cat([p.errs for p in parts]))


class _Fused(NamedTuple):
    """What the fused tile solver needs besides the tile: stopping rule, the image side of every image block and the
    block's normalised tokens as a ``[D, bt·M·P]`` GEMM operand (both computed once per forward), the scratch buffers
    shared by all tiles (similarities·log₂e/ε, the same regrouped per problem, kernel; three row vectors), and the
    output ``[B, C, M, N]`` (length-sorted classes) the tiles write into."""

    stop: str
    rows: List[RowSide]
    work: Sequence[Tensor]
    img_t: List[Tensor]
    vec_work: Tensor
    term: Tensor


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
        """One tile through :func:`sinkhorn` (the path with a graph, the log domain, empty token sets and the "batched"
        tiling): image tokens ``[B, M, P, D]`` (normalised), text tokens ``[Cc, N, L, D]`` (normalised).

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

    def _tiles(self, last_sorted: List[int], B: int, M: int, P: int, N: int, itemsize: int, mode: str,
               bounds: Optional[Sequence[int]] = None) -> Tuple[int, List[Tuple[int, int]]]:
        """Images per tile and the class tiles ``[(start, end), ...]`` over the length-sorted classes.

        ``"batched"``: all images × ``class_chunk`` classes. ``"cache"``: a tile of ``bt`` images and classes
        ``[s, e)`` padded to ``L = max length in [s, e)`` holds ``bt·M·P × (e − s)·N·L`` similarities; classes are
        added greedily (ascending length, so padding stays small) while ``_TILE_BUFFERS`` such tensors fit the cache
        budget, but never fewer than ``_MIN_GEMM_COLS / (N·L)`` classes (GEMM speed) and never more than
        ``class_chunk``; a tile holding ``1/_SPLIT_AT_LENGTH`` of the budget ends where the length grows. One image
        per tile unless all classes fit in one tile, then as many images as fit. No tile crosses one of ``bounds``
        (the piece offsets of :class:`TokenPieces`).
        """
        cfg = self.cfg
        C = len(last_sorted)
        lens = [max(1, int(x)) for x in last_sorted]
        ends = sorted(set(bounds or []) | {C})
        if mode == "batched":
            tiles = []
            for a, b in zip([0] + ends, ends):
                tiles += [(s, min(b, s + cfg.class_chunk)) for s in range(a, b, cfg.class_chunk)]
            return B, tiles
        budget = cfg.cache_bytes if cfg.cache_bytes is not None else cache_budget_bytes()
        max_entries = max(1, budget // (_TILE_BUFFERS * itemsize))
        bt = cfg.tile_images if cfg.tile_images is not None else 1
        bt = min(bt, B)
        rows = bt * M * P
        tiles: List[Tuple[int, int]] = []
        s = 0
        while s < C:
            stop = next(b for b in ends if b > s)  # tiles never cross a piece bound
            if cfg.tile_classes is not None:
                e = min(stop, s + min(cfg.tile_classes, cfg.class_chunk))
            else:
                e = s + 1
                while e < stop and e - s < cfg.class_chunk:
                    cols = (e + 1 - s) * N * lens[e]
                    if rows * cols > max_entries and (e - s) * N * lens[e - 1] >= _MIN_GEMM_COLS:
                        break
                    if lens[e] > lens[e - 1] and rows * (e - s) * N * lens[e - 1] * _SPLIT_AT_LENGTH >= max_entries:
                        break  # padding the classes so far to a longer length would cost more than another tile
                    e += 1
            tiles.append((s, e))
            s = e
        if cfg.tile_images is None and len(tiles) == 1:
            per_image = M * P * C * N * max(lens)
            bt = max(1, min(B, max_entries // per_image))
        return bt, tiles

    @staticmethod
    def _text_tile(txt_tokens: Tensor, txt_mask: Tensor, idx: Optional[Tensor], Lc: int, dtype: torch.dtype,
                   factor: float, what: str) -> Tuple[Tensor, Tensor]:
        """Text tokens of the classes ``idx`` (all of ``txt_tokens`` when None) cut at ``Lc``: ``factor ·`` unit
        vectors (F.normalize's clamp at 1e-12), exact zeros on padding, ``[Ct, N, Lc, D]``, and their mask
        ``[Ct, N, Lc]``.

        Three passes over the gathered tokens (gather, norms, one scaling by ``mask · factor / |t|``); padding is only
        replaced by zeros (a fourth pass) when something in the tile is not finite, and then the real tokens are
        checked."""
        if idx is None:
            tm, t = txt_mask[:, :, :Lc], txt_tokens[:, :, :Lc].to(dtype)
        else:
            tm, t = txt_mask[idx, :, :Lc], txt_tokens[idx, :, :Lc].to(dtype)
        nrm = torch.linalg.vector_norm(t, dim=-1)
        if not bool(torch.isfinite(nrm.sum())):  # non-finite entries (perhaps only in padding): zero the padding
            t = torch.where(tm[..., None], t, torch.zeros((), dtype=dtype, device=t.device))
            _finite_or_raise(t, what)
            nrm = torch.linalg.vector_norm(t, dim=-1)
        f = torch.where(tm, factor / nrm.clamp_min(1e-12), torch.zeros((), dtype=dtype, device=t.device))
        # (a fresh gather is scaled in place unless autograd needs it for the norm's backward; a slice is a view)
        inplace = idx is not None and not t.requires_grad
        return (t.mul_(f.unsqueeze(-1)) if inplace else t * f.unsqueeze(-1)), tm

    def _class_tile(self, s: int, e: int, Lc: int, imgt: Tensor, img_blocks: Sequence[Tensor], img_mask: Tensor,
                    txt_tokens: Tensor, txt_mask: Tensor, idx: Optional[Tensor], bt: int, need_graph: bool,
                    grad_mode: str, fused: Optional["_Fused"], iters: List[Tensor], errs: List[Tensor],
                    checkpoint_tiles: bool = True) -> Optional[Tensor]:
        """Sorted classes ``[s, e)`` (the caller's ``idx`` of ``txt_tokens``, or all of ``txt_tokens`` when None)
        padded to ``Lc`` × all image blocks of ``bt`` images (``img_blocks``: ``imgt`` split by ``bt``): the token
        term ``[B, e − s, M, N]``, written into ``fused.term`` when there is no graph (returns None)."""
        cfg = self.cfg
        reference = cfg.compat == "reference"
        B, M, P, D = imgt.shape
        N = txt_tokens.shape[1]
        what = f"txt_tokens (classes {s}..{e - 1} after length sort)"
        if fused is not None:
            # log₂e/ε folded into the text tokens: the GEMM gives Z = S·log₂e/ε (base-2 units, for exp2) with no
            # extra pass.
            y, tm = self._text_tile(txt_tokens, txt_mask, idx, Lc, imgt.dtype, _LOG2E / cfg.eps_token, what)
            side = col_side(tm, imgt.dtype)
            y = y.view(-1, D)
        # With a checkpointed graph the text tokens are normalised inside each checkpoint (recomputed in backward) so
        # that no normalised copy of the tile stays alive until backward; the raw tokens are saved instead.
        normalise_inside = checkpoint_tiles and need_graph and grad_mode != "autodiff" and idx is None
        if fused is None:
            tt, tm = (txt_tokens, txt_mask[:, :, :Lc]) if normalise_inside else \
                self._text_tile(txt_tokens, txt_mask, idx, Lc, imgt.dtype, 1.0, what)
        rows: List[Tensor] = []
        for bi, b0 in enumerate(range(0, B, bt)):
            b1 = min(B, b0 + bt)
            if fused is not None and side.ok and fused.rows[bi].ok:
                xt = fused.img_t[bi]  # [D, bt·M·P]
                w = fused.work
                Z = torch.mm(y, xt, out=w[0][:y.shape[0] * xt.shape[1]].view(y.shape[0], xt.shape[1]))
                res = similarity_sinkhorn(Z.view(e - s, N, Lc, b1 - b0, M, P), cfg.eps_token, fused.rows[bi], side,
                                          stop=fused.stop, max_iter=cfg.max_iter, tol=cfg.tol, work=w[1:],
                                          check_finite=False, base2=True, vec_work=fused.vec_work)
                iters.append(res.n_iter.reshape(-1))
                errs.append(res.marginal_err.amax().reshape(1))
                fused.term[b0:b1, s:e] = res.sigma if reference else res.mass - res.sigma
                continue
            if fused is not None:  # an empty token set in this tile: sinkhorn's masking (all-zero plans)
                tt, _ = self._text_tile(txt_tokens, txt_mask, idx, Lc, imgt.dtype, 1.0, what)

            def run(imgt_: Tensor, tt_: Tensor, tm_: Tensor = tm, mask_: Tensor = img_mask[b0:b1]) -> Tensor:
                if normalise_inside:
                    tt_, tm_ = self._text_tile(tt_, txt_mask, None, Lc, imgt.dtype, 1.0, what)
                d_tok, sigma = self._token_chunk(imgt_, mask_, tt_, tm_, grad_mode, iters, errs)
                return sigma if reference else d_tok

            if checkpoint_tiles and need_graph and grad_mode != "autodiff":
                # Recompute the tile in backward instead of keeping its [Bt, Ct, M, N, P, L] state alive until
                # then. Deterministic (same inputs, same iterations), so the recomputed plan is identical. (The
                # recomputation appends its iteration counts to a list this forward has already consumed.)
                out = checkpoint(run, img_blocks[bi], tt, use_reentrant=False)
            else:
                out = run(img_blocks[bi], tt)
            if fused is not None:
                fused.term[b0:b1, s:e] = out
            else:
                rows.append(out)
        return None if fused is not None else torch.cat(rows, dim=0)

    def _token_level(self, img_tokens: Tensor, img_mask: Optional[Tensor], txt_tokens: Union[Tensor, TokenPieces],
                     txt_mask: Optional[Tensor], dtype: torch.dtype, need_graph: bool, iters: List[Tensor],
                     errs: List[Tensor], checkpoint_tiles: bool = True) -> Tensor:
        """Token term per (b, c, m, n): d_tok (paper) or σ_tok (reference), ``[B, C, M, N]`` in caller class order."""
        cfg = self.cfg
        B, M, P, D = img_tokens.shape
        pieces = txt_tokens if isinstance(txt_tokens, TokenPieces) else None
        C, N, L, D2 = txt_tokens.shape
        if D != D2:
            raise ValueError(f"HierarchicalOTHead: token widths differ: img {tuple(img_tokens.shape)} vs txt "
                             f"{tuple(txt_tokens.shape)}")
        dev = img_tokens.device
        zero = torch.zeros((), dtype=dtype, device=dev)
        imgt = img_tokens.to(dtype)
        if img_mask is None:
            img_mask = torch.ones(B, M, P, dtype=torch.bool, device=dev)
        else:
            img_mask = img_mask.to(dev, torch.bool).expand(B, M, P)
            imgt = torch.where(img_mask[..., None], imgt, zero)  # padding may hold NaN: zero it before normalising
        imgt = F.normalize(imgt, dim=-1).contiguous()
        _finite_or_raise(imgt, "img_tokens")
        pos = torch.arange(1, L + 1, device=dev)
        if pieces is not None:
            # The pieces' row order is kept (they come length-sorted) and tiles stay inside pieces.
            sorted_mask = pieces.sorted_mask().to(dev).expand(C, N, L)
            order = pieces.order.to(dev)
            last_sorted = (sorted_mask * pos).amax(dim=(-1, -2)).tolist()
        else:
            txt_mask = (torch.ones(C, N, L, dtype=torch.bool, device=dev) if txt_mask is None
                        else txt_mask.to(dev, torch.bool).expand(C, N, L))
            # Sort classes by last real token position so each tile pads only to its own max (the mask need not be
            # left-aligned: trimming after the last real position is exact). One host read per forward.
            last = (txt_mask * pos).amax(dim=(-1, -2))  # [C]
            order = torch.argsort(last, stable=True)
            last_sorted = last[order].tolist()
        grad_mode = "detach" if cfg.compat == "reference" else cfg.grad
        reference = cfg.compat == "reference"
        mode = cfg.tile if cfg.tile != "auto" else ("cache" if dev.type == "cpu" else "batched")
        bt, class_tiles = self._tiles(last_sorted, B, M, P, N, torch.finfo(dtype).bits // 8, mode,
                                      None if pieces is None else pieces.bounds)
        # The fused tile solver covers the no-graph kernel-domain case, for problems with at least one real token on
        # each side (an empty problem has an all-zero plan: left to sinkhorn's masking).
        fused: Optional[_Fused] = None
        if mode == "cache" and not need_graph and cfg.domain == "kernel":
            n_max = bt * M * P * N * max((e - s) * max(1, int(max(last_sorted[s:e]))) for s, e in class_tiles)
            v_max = bt * M * P * N * max(e - s for s, e in class_tiles)
            fused = _Fused(stop="reference" if reference else cfg.stop,
                           rows=[row_side(img_mask[b0:b0 + bt], dtype) for b0 in range(0, B, bt)],
                           work=torch.empty(_TILE_BUFFERS, n_max, dtype=dtype, device=dev).unbind(0),  # all tiles
                           img_t=[blk.reshape(-1, D).t() for blk in torch.split(imgt, bt)],
                           vec_work=torch.empty(3 * v_max, dtype=dtype, device=dev),
                           term=torch.empty(B, C, M, N, dtype=dtype, device=dev))
        img_blocks = torch.split(imgt, bt)
        sizes = [e - s for s, e in class_tiles]
        lengths = [max(1, int(max(last_sorted[s:e]))) for s, e in class_tiles]
        txt_pieces: List[Optional[Tensor]] = []
        mask_pieces: Sequence[Optional[Tensor]]
        if pieces is not None:
            # Tiles are views of the pieces (one autograd node per piece with a graph); nothing is gathered.
            for j, (a, b) in enumerate(zip(pieces.bounds, pieces.bounds[1:])):
                spans = [(s - a, e - a, n) for (s, e), n in zip(class_tiles, lengths) if a <= s < b]
                x = pieces.pieces[j]
                txt_pieces += _SliceTiles.apply(x, spans) if need_graph else [x[u:v, :, :n] for u, v, n in spans]
            mask_pieces = torch.split(sorted_mask, sizes)
        elif need_graph:
            # One gather and one split for the whole forward instead of a slice or gather per tile: in backward each
            # of those would scatter its gradient into a zero tensor of the full [C, N, L, D] (or [B, M, P, D]) size,
            # once per tile, i.e. memory and time growing with C².
            txt_pieces = list(_GatherPieces.apply(txt_tokens, order, sizes, lengths))
            mask_pieces = torch.split(txt_mask.index_select(0, order), sizes)
        else:
            txt_pieces = mask_pieces = [None] * len(class_tiles)
        cols: List[Tensor] = []
        for (s, e), n, tp, mp in zip(class_tiles, lengths, txt_pieces, mask_pieces):
            out = self._class_tile(s, e, n, imgt, img_blocks, img_mask,
                                   txt_tokens if tp is None else tp, txt_mask if mp is None else mp,
                                   order[s:e] if tp is None else None, bt, need_graph, grad_mode, fused, iters, errs,
                                   checkpoint_tiles)
            if out is not None:
                cols.append(out)
        term = fused.term if fused is not None else torch.cat(cols, dim=1)  # [B, C, M, N], sorted class order
        if fused is not None and not bool(torch.isfinite(term.sum())):
            # (similarity_sinkhorn's own check, once per forward instead of once per tile)
            raise FloatingPointError(
                f"sinkhorn: non-finite plan in the token level ({int((~torch.isfinite(term)).sum())} of "
                f"{term.numel()} (image, class, view, prompt) problems) for image tokens {tuple(img_tokens.shape)}, "
                f"text tokens {tuple(txt_tokens.shape)}, eps={cfg.eps_token}. Kernel-domain underflow? Try "
                f"domain='log' or a larger eps."
            )
        inv = torch.empty_like(order)
        inv[order] = torch.arange(C, device=dev)
        return term[:, inv]

    @property
    def uses_tokens(self) -> bool:
        """Whether token sets change the logits: a token level, and not the paper form at β = 0."""
        return self.cfg.token_level and (self.cfg.compat == "reference" or self.cfg.beta != 0.0)

    def token_term(self, img_tokens: Tensor, txt_tokens: Union[Tensor, TokenPieces], img_mask: Optional[Tensor] = None,
                   txt_mask: Optional[Tensor] = None, dtype: Optional[torch.dtype] = None,
                   checkpoint_tiles: bool = True) -> "TokenTerm":
        """The token level alone: d_tok (paper) or σ_tok (reference) for every (image, class, view, prompt),
        ``[B, C, M, N]`` (fp32, or float64 for float64 tokens), with its Sinkhorn diagnostics. Inputs as in
        :meth:`forward`. Pass the result to :meth:`forward` as ``token_term``; the token level of (image, class)
        pairs does not depend on the other classes, so terms computed class chunk by class chunk can be joined with
        :meth:`TokenTerm.cat` (a chunk's text tokens and tiles then live only while its own term is computed).
        ``checkpoint_tiles=False``: with a graph, keep every tile's state for backward instead of recomputing it tile
        by tile (for a caller that checkpoints the whole call, e.g. one class chunk with its text pass)."""
        if not self.uses_tokens:
            raise ValueError("HierarchicalOTHead.token_term: this head has no token level (token_level False, or the "
                             "paper form with beta 0)")
        if isinstance(txt_tokens, TokenPieces) and txt_mask is not None:
            raise ValueError("HierarchicalOTHead: txt_tokens is a TokenPieces, which carries its own masks; pass "
                             "txt_mask=None")
        if dtype is None:
            dtype = torch.float64 if img_tokens.dtype == torch.float64 else torch.float32
        need_graph = (self.cfg.compat != "reference" and torch.is_grad_enabled()
                      and (img_tokens.requires_grad or txt_tokens.requires_grad))
        iters: List[Tensor] = []
        errs: List[Tensor] = []
        with torch.set_grad_enabled(need_graph):
            term = self._token_level(img_tokens, img_mask, txt_tokens, txt_mask, dtype, need_graph, iters, errs,
                                     checkpoint_tiles)
        dev = term.device
        return TokenTerm(term, torch.cat(iters).float() if iters else torch.zeros(0, device=dev),
                         # (recomputation in backward may append more iteration counts than marginal errors)
                         torch.cat(errs[:len(iters)]).float() if iters else torch.zeros(0, device=dev))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        img_global: Tensor,
        txt_global: Tensor,
        logit_scale: Union[Tensor, float],
        img_tokens: Optional[Tensor] = None,
        img_mask: Optional[Tensor] = None,
        txt_tokens: Union[Tensor, TokenPieces, None] = None,
        txt_mask: Optional[Tensor] = None,
        log: bool = False,
        token_term: Optional["TokenTerm"] = None,
    ) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """Compute OT logits.

        Parameters
        ----------
        img_global : ``[B, M, D]`` view-level image features (e.g. CLS per visual prompt set); normalised inside.
        txt_global : ``[C, N, D]`` prompt-level text features (EOT per prompt); normalised inside.
        logit_scale : CLIP's ``exp(logit_scale)`` (≈ 100 = 1/τ), tensor or float.
        img_tokens, img_mask : ``[B, M, P, D]`` and bool ``[B, M, P]`` (True = real token), optional.
        txt_tokens, txt_mask : ``[C, N, L, D]`` and bool ``[C, N, L]``, optional (padded ragged token sets); or
            ``txt_tokens`` a :class:`TokenPieces` carrying its own masks (then ``txt_mask`` must be None).
        token_term : the token level computed beforehand by :meth:`token_term` (e.g. class chunk by class chunk,
            :meth:`TokenTerm.cat`), instead of the token inputs.
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
        h = txt_global.to(dtype)
        # s(z, h) = <z, h> / |h| (F.normalize's clamp at 1e-12): dividing the [B, C, M, N] result by the [C, N] norms
        # instead of normalising h keeps [C, N, D] copies out of peak memory (C = 1000: 8 MB).
        S = torch.einsum("bmd,cnd->bcmn", z, h) / torch.linalg.vector_norm(h, dim=-1).clamp_min(1e-12)[:, None, :]
        reference = cfg.compat == "reference"
        term: Optional[Tensor] = None
        if token_term is not None:
            if img_tokens is not None or txt_tokens is not None:
                raise ValueError("HierarchicalOTHead: give the token inputs or a precomputed token_term, not both")
            if tuple(token_term.term.shape) != (B, C, M, N):
                raise ValueError(f"HierarchicalOTHead: token_term is {tuple(token_term.term.shape)}, expected "
                                 f"[B, C, M, N] = {(B, C, M, N)}")
        elif self.uses_tokens and img_tokens is not None and txt_tokens is not None:
            if txt_tokens.shape[:2] != (C, N):
                raise ValueError(f"HierarchicalOTHead: the text tokens hold {txt_tokens.shape[0]} classes x "
                                 f"{txt_tokens.shape[1]} prompts, txt_global {C} x {N}")
            token_term = self.token_term(img_tokens, txt_tokens, img_mask, txt_mask, dtype)
        if token_term is not None:
            term = token_term.term.to(dtype)

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
            if token_term is not None and token_term.iters.numel():
                it = token_term.iters.float()
                diag["token_iters_mean"] = it.mean()
                diag["token_iters_max"] = it.amax()
                diag["token_iters_min"] = it.amin()
                diag["token_marginal_err"] = token_term.errs.amax().float()
        return logits, diag
