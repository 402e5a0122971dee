"""Benchmark: the hierarchical OT head vs the per-(image, class) reference loop (ALIGN structure), and vs its floor,
the bare token-similarity GEMM.

Both compute the ALIGN reference-compat logits (σ_tok added to the prompt cost, plans without gradient, reference
stopping rule pooled per (image, class) at the token level and over all B·C problems at the prompt level), in fp32,
on the same synthetic inputs: B images × M views with P = 198 tokens, C classes × N prompts with class-dependent text
lengths L_c ∈ [4, 12], D = 512; unit vectors with a shared component so the mean token cosine is ≈ 0.25 (CLIP-like).
The head runs with its default tiling for the device (CPU: cache tiles; CUDA: batched class chunks), or ``--tile``.

Measurements
------------
- time: median of ``--repeats`` runs each (after one warm-up run of each), ``torch.set_num_threads(--threads)``;
  the runs of head, loop and GEMM are interleaved so that a change of machine load hits all three alike. The load
  average is printed before and after: CPU timings are only meaningful on a quiet machine.
- GEMM: the similarities of every image token with every real text token, ``[B·M·P, D] @ [D, N·Σ_c L_c]``, timed
  two ways — as one GEMM, and as the head's own tile GEMMs (padded to each tile's longest class, one output buffer
  reused, so it stays in cache). ``gemm_ratio`` = head time / the faster of the two: how far the head is above the
  cost of computing the similarities at all (both the head and the loop must do that GEMM); ``gemm_ratio_one_call``
  = head time / the one-call GEMM.
- max_abs_diff: max |logits_head − logits_loop| / logit_scale.
- peak memory of the head at C = ``--mem-classes`` vs C = 100: on CUDA via ``torch.cuda.max_memory_allocated``; on
  CPU (no allocator statistics there, and tracemalloc does not see torch's allocator) with a ``TorchDispatchMode``
  that records every tensor storage created during the forward and frees it when its last tensor dies (weakref
  finalisers), i.e. the peak of *live tensor bytes allocated inside the head*. Inputs are excluded; kernel-internal
  scratch buffers are not seen.

The first line also gives ``OMP_WAIT_POLICY``: with ``PASSIVE`` every parallel operation wakes sleeping threads, which
costs the head's many vector-sized operations more than the GEMM (gemm_ratio about 15% higher on a 2-core VM).

The last line is machine-readable: ``speedup=<loop/head> gemm_ratio=<head/GEMM> max_abs_diff=<d>
peak_mem_ratio_c1000_c100=<r> gemm_ratio_one_call=<head/one-call GEMM>``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.memory import peak_memory  # noqa: E402
from promptot.ot import HierarchicalOTHead, OTHeadConfig  # noqa: E402

_spec = importlib.util.spec_from_file_location("_reference_loop", ROOT / "bench" / "_reference_loop.py")
_rl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rl)  # type: ignore[union-attr]


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
    def forward() -> None:
        with torch.no_grad():
            head(*args)
    return peak_memory(forward, device)


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def median_times(fns: Dict[str, Callable[[], object]], repeats: int, device: str) -> Dict[str, List[float]]:
    """Wall times of each function, ``repeats`` rounds of all of them in turn (after one warm-up round)."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for rnd in range(repeats + 1):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            if rnd:
                times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=100, help="C for the speed/accuracy comparison")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--views", type=int, default=4, help="M = N")
    ap.add_argument("--tokens", type=int, default=198)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--mem-classes", type=int, default=1000, help="large C for the peak-memory ratio")
    ap.add_argument("--class-chunk", type=int, default=OTHeadConfig.class_chunk)
    ap.add_argument("--tile", default="auto", choices=["auto", "cache", "batched"], help="OTHeadConfig.tile")
    ap.add_argument("--cache-bytes", type=int, default=None, help="OTHeadConfig.cache_bytes (default: from the OS)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each (medians are reported)")
    ap.add_argument("--skip-mem", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/ot_head.py: --device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    dev = args.device
    B, C, M, P, D = args.batch, args.classes, args.views, args.tokens, args.dim
    load_before = load_average()

    ig, tg, it, tl, tt, tm = make_inputs(B, C, M, M, P, D, device=dev)
    cfg = OTHeadConfig(compat="reference", class_chunk=args.class_chunk, tile=args.tile, cache_bytes=args.cache_bytes)
    head = HierarchicalOTHead(cfg)
    scale = 100.0

    # The GEMM floor: normalised image tokens against every real text token, once as one GEMM and once tiled like the
    # head (same tiles, one reused output buffer).
    X = torch.nn.functional.normalize(it, dim=-1).reshape(-1, D).contiguous()
    Y = torch.nn.functional.normalize(torch.cat([t.reshape(-1, D) for t in tl]), dim=-1)
    lens = torch.tensor([t.shape[1] for t in tl])
    order = torch.argsort(lens, stable=True)
    ls = lens[order].tolist()
    mode = args.tile if args.tile != "auto" else ("cache" if dev == "cpu" else "batched")
    bt, ctiles = head._tiles(ls, B, M, P, M, 4, mode)
    Ypad = torch.nn.functional.normalize(tt, dim=-1)[order.to(tt.device)]  # [C, N, Lmax, D], length-sorted
    tile_ops = [(Ypad[s:e, :, :max(ls[s:e])].reshape(-1, D).contiguous(), X[b0 * M * P:min(B, b0 + bt) * M * P])
                for s, e in ctiles for b0 in range(0, B, bt)]
    out_buf = torch.empty(max(y.shape[0] * x.shape[0] for y, x in tile_ops), device=dev)

    def tiled_gemm() -> None:
        for y, x in tile_ops:
            torch.mm(y, x.t(), out=out_buf[:y.shape[0] * x.shape[0]].view(y.shape[0], x.shape[0]))

    results = {}

    def run_head() -> None:
        results["head"] = head(ig, tg, scale, it, None, tt, tm, log=True)

    def run_loop() -> None:
        results["loop"] = _rl.loop_head_logits(ig, tg, scale, it, tl, compat="reference", stop="reference")

    with torch.no_grad():
        times = median_times({"head": run_head, "loop": run_loop, "gemm": lambda: X @ Y.t(),
                              "gemm_tiled": tiled_gemm}, args.repeats, dev)
    med = {k: statistics.median(v) for k, v in times.items()}
    out, diag = results["head"]
    ref, iters = results["loop"]
    diag = {k: float(v) for k, v in diag.items()}
    diff = float((out - ref).abs().max()) / scale
    speedup = med["loop"] / med["head"]
    gemm = min(med["gemm"], med["gemm_tiled"])
    it_t = torch.tensor(iters, dtype=torch.float)
    load_after = load_average()

    print(f"device={dev} threads={args.threads} B={B} C={C} M=N={M} P={P} D={D} L_c in [4,12] tile={mode} "
          f"({bt} image(s) x {len(ctiles)} class tiles) class_chunk={args.class_chunk} repeats={args.repeats} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"load average before {load_before}, after {load_after}")
    print(f"{'':<30}{'median [s]':>11}{'min [s]':>10}{'max [s]':>10}{'token iters min/med/max':>26}")
    rows = [("reference loop (per pair)", "loop", f"{int(it_t.min())}/{int(it_t.median())}/{int(it_t.max())}"),
            ("OT head", "head", f"{int(diag['token_iters_min'])}/-/{int(diag['token_iters_max'])}"),
            (f"GEMM, one call ({X.shape[0]}x{Y.shape[0]})", "gemm", ""),
            (f"GEMM, head's {len(tile_ops)} tiles", "gemm_tiled", "")]
    for name, k, extra in rows:
        print(f"{name:<30}{med[k]:>11.4f}{min(times[k]):>10.4f}{max(times[k]):>10.4f}{extra:>26}")
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
    print(f"speedup={speedup:.2f} gemm_ratio={med['head'] / gemm:.2f} max_abs_diff={diff:.3g} "
          f"peak_mem_ratio_c1000_c100={ratio:.3f} gemm_ratio_one_call={med['head'] / med['gemm']:.2f}")


if __name__ == "__main__":
    main()
