"""Benchmark: batched hierarchical OT head vs the per-(image, class) reference loop (ALIGN structure).

Both compute the ALIGN reference-compat logits (σ_tok added to the prompt cost, plans without gradient, reference
stopping rule pooled per (image, class) at the token level and over all B·C problems at the prompt level), in fp32,
on the same synthetic inputs: B images × M views with P = 198 tokens, C classes × N prompts with class-dependent text
lengths L_c ∈ [4, 12], D = 512; unit vectors with a shared component so the mean token cosine is ≈ 0.25 (CLIP-like).

Measurements
------------
- time: one run each (after a small warm-up of the batched head), ``torch.set_num_threads(2)``.
- max_abs_diff: max |logits_batched − logits_loop| / logit_scale.
- peak memory of the batched head at C = 1000 vs C = 100 (default ``class_chunk``): on CUDA via
  ``torch.cuda.max_memory_allocated``; on CPU (no allocator statistics there, and tracemalloc does not see torch's
  allocator) with a ``TorchDispatchMode`` that records every tensor storage created during the forward and frees it
  when its last tensor dies (weakref finalisers), i.e. the peak of *live tensor bytes allocated inside the head*.
  Inputs are excluded; kernel-internal scratch buffers are not seen.

The last line is machine-readable: ``speedup=<x> max_abs_diff=<d> peak_mem_ratio_c1000_c100=<r>``.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import weakref
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from promptot.ot import HierarchicalOTHead, OTHeadConfig  # noqa: E402

_spec = importlib.util.spec_from_file_location("_reference_loop", ROOT / "bench" / "_reference_loop.py")
_rl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rl)  # type: ignore[union-attr]


class LiveTensorBytes(TorchDispatchMode):
    """Peak of live tensor-storage bytes allocated by ops run inside the mode (CPU-friendly memory probe)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: Dict[int, int] = {}
        self.size: Dict[int, int] = {}
        self.cur = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.cur -= self.size.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key == 0:
                    continue
                if key not in self.refs:
                    self.refs[key] = 0
                    self.size[key] = st.nbytes()
                    self.cur += st.nbytes()
                    self.peak = max(self.peak, self.cur)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def make_inputs(B: int, C: int, M: int, N: int, P: int, D: int, seed: int = 0, device: str = "cpu"
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)

    def unit(*shape: int) -> torch.Tensor:
        x = torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1) + 0.55 * base
        return torch.nn.functional.normalize(x, dim=-1)

    ig, tg, it = unit(B, M, D), unit(C, N, D), unit(B, M, P, D)
    Ls = torch.randint(4, 13, (C,), generator=g).tolist()
    tl = [unit(N, L, D) for L in Ls]
    Lm = max(Ls)
    tt = torch.zeros(C, N, Lm, D)
    tm = torch.zeros(C, N, Lm, dtype=torch.bool)
    for c, t in enumerate(tl):
        tt[c, :, : t.shape[1]] = t
        tm[c, :, : t.shape[1]] = True
    mv = lambda x: x.to(device)  # noqa: E731
    return mv(ig), mv(tg), mv(it), [mv(t) for t in tl], mv(tt), mv(tm)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(head: HierarchicalOTHead, args: tuple, device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            head(*args)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    probe = LiveTensorBytes()
    with torch.no_grad(), probe:
        out = head(*args)
    del out
    return probe.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=100, help="C for the speed/accuracy comparison")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--views", type=int, default=4, help="M = N")
    ap.add_argument("--tokens", type=int, default=198)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--mem-classes", type=int, default=1000, help="large C for the peak-memory ratio")
    ap.add_argument("--class-chunk", type=int, default=OTHeadConfig.class_chunk)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-mem", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda not available, using cpu")
        args.device = "cpu"
    torch.set_num_threads(args.threads)
    dev = args.device
    B, C, M, P, D = args.batch, args.classes, args.views, args.tokens, args.dim

    ig, tg, it, tl, tt, tm = make_inputs(B, C, M, M, P, D, device=dev)
    cfg = OTHeadConfig(compat="reference", class_chunk=args.class_chunk)
    head = HierarchicalOTHead(cfg)
    scale = 100.0
    with torch.no_grad():
        head(ig[:1], tg[:8], scale, it[:1], None, tt[:8], tm[:8])  # warm-up (allocator, thread pool)
        sync(dev)
        t0 = time.perf_counter()
        out, diag = head(ig, tg, scale, it, None, tt, tm, log=True)
        sync(dev)
        t_batched = time.perf_counter() - t0
        diag = {k: float(v) for k, v in diag.items()}

        t0 = time.perf_counter()
        ref, iters = _rl.loop_head_logits(ig, tg, scale, it, tl, compat="reference", stop="reference")
        sync(dev)
        t_loop = time.perf_counter() - t0
    diff = float((out - ref).abs().max()) / scale
    speedup = t_loop / t_batched
    it_t = torch.tensor(iters, dtype=torch.float)

    print(f"device={dev} threads={args.threads} B={B} C={C} M=N={M} P={P} D={D} L_c in [4,12] "
          f"class_chunk={args.class_chunk}")
    print(f"{'implementation':<28}{'time [s]':>10}{'token iters min/med/max':>26}")
    print(f"{'reference loop (per pair)':<28}{t_loop:>10.3f}{'':>8}{int(it_t.min())}/{int(it_t.median())}/"
          f"{int(it_t.max())}")
    print(f"{'batched head':<28}{t_batched:>10.3f}{'':>8}{int(diag['token_iters_min'])}/-/"
          f"{int(diag['token_iters_max'])}")
    print(f"prompt-level iters={int(diag['prompt_iters'])} plan entropy (normalised)={diag['plan_entropy']:.4f} "
          f"max/min plan ratio={diag['plan_max_min_ratio']:.3f}")

    ratio = float("nan")
    if not args.skip_mem:
        peaks = {}
        for Cm in (100, args.mem_classes):
            ig2, tg2, it2, _, tt2, tm2 = make_inputs(B, Cm, M, M, P, D, seed=1, device=dev)
            peaks[Cm] = peak_bytes(head, (ig2, tg2, scale, it2, None, tt2, tm2), dev)
            del ig2, tg2, it2, tt2, tm2
        ratio = peaks[args.mem_classes] / peaks[100]
        method = "cuda max_memory_allocated" if dev == "cuda" else "live tensor bytes (TorchDispatchMode)"
        print(f"peak memory ({method}): C=100 {peaks[100] / 2**20:.1f} MiB, C={args.mem_classes} "
              f"{peaks[args.mem_classes] / 2**20:.1f} MiB")
    print(f"speedup={speedup:.2f} max_abs_diff={diff:.3g} peak_mem_ratio_c1000_c100={ratio:.3f}")


if __name__ == "__main__":
    main()
