"""The benchmark suite: ratios measured side by side in one run (medians of repeats), peak memory, one JSON report.

``python -m bench`` (CPU) or ``bench/gpu.sh`` (CUDA). Each benchmark prints its lines and adds an entry to the report:

* ``text_tower`` — prompts through the text tower truncated after the longest EOT vs the full 77 positions, on the
  1,000 ImageNet class names (``promptot/assets/imagenet_classnames.txt``) × 4 templates; equal outputs required.
* ``eval_cache`` — evaluation with the static text side computed once per evaluation vs recomputed per batch, at
  100 and 1,000 classes (CoOp).
* ``train_step`` — one training step of every registered trainer at 100 vs 1,000 classes with ``MODEL.TEXT_CHUNK``
  on: time and peak memory, and their ratios.
* ``throughput`` — training images/s of every registered trainer on the mini CLIP (10 classes, 32 px, batch 32),
  and the share of a step spent in the image tower, the text tower, the OT head, backward and the optimizer.
* ``ot_head`` — ``bench/ot_head.py`` (batched head vs the reference-style loop, GEMM floor), run as a subprocess.
* ``align_imagenet_step`` (``--scale full``) — one ALIGN training step shaped like ImageNet (B 4, C 1,000, M = N = 4)
  on a ViT-B/16-shaped random CLIP.

Timings on a shared machine are meaningless: the report records the load average before and after each benchmark.
Sizes: ``--scale small`` (default on CPU) shrinks the towers (the ratios are what is compared); ``full`` uses
ViT-B/16 shapes (GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.memory import peak_memory  # noqa: E402

SCALES = {
    # text width/layers, vision width/layers, image size, patch, embed
    "small": dict(text_width=128, text_layers=4, width=128, layers=4, image_size=32, patch_size=8, embed_dim=64),
    "full": dict(text_width=512, text_layers=12, width=768, layers=12, image_size=224, patch_size=16, embed_dim=512),
}


# ----------------------------------------------------------------------------------------------- helpers
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], device: str, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def tiny_clip(scale: str, device: str, precision: str = "fp32"):
    """A random OpenAI-format CLIP of the scale's shape, wrapped in PromptedCLIP, frozen."""
    from open_clip.model import convert_weights_to_lp

    from promptot.clip import PromptedCLIP, build_tiny_clip

    m = build_tiny_clip("vit", **SCALES[scale])
    m.requires_grad_(False)
    if precision == "fp16":
        convert_weights_to_lp(m, torch.float16)
    return PromptedCLIP(m.to(device))


def imagenet_names(n: int = 1000) -> List[str]:
    names = (ROOT / "promptot" / "assets" / "imagenet_classnames.txt").read_text().splitlines()
    return [" ".join(line.split()[1:]) if line.split()[0].startswith("n0") else line for line in names][:n]


# ----------------------------------------------------------------------------------------------- benchmarks
def bench_text_tower(device: str, scale: str, repeats: int, precision: str = "fp32") -> Dict[str, Any]:
    from promptot.clip import tokenize

    clip = tiny_clip(scale, device, precision)
    templates = ["a photo of a {}.", "a bad photo of the {}.", "a origami {}.", "a {} in a video game."]
    ids = tokenize([t.format(n) for n in imagenet_names() for t in templates]).to(device)
    chunk = 500

    def run(truncate: bool) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([clip.encode_text(clip.embed_tokens(ids[s:s + chunk]), ids[s:s + chunk],
                                               truncate=truncate).features for s in range(0, len(ids), chunk)])

    diff = float((run(True).float() - run(False).float()).abs().max())
    t_trunc = median_time(lambda: run(True), device, repeats)
    t_full = median_time(lambda: run(False), device, repeats)
    longest = int(ids.argmax(-1).max()) + 1
    print(f"text tower, {len(ids)} prompts: truncated {t_trunc:.3f} s vs full {t_full:.3f} s -> "
          f"speedup {t_full / t_trunc:.2f}x (longest prompt {longest} of 77 positions), max |diff| {diff:.2e}")
    return {"prompts": len(ids), "truncated_s": t_trunc, "full_s": t_full, "speedup": t_full / t_trunc,
            "max_abs_diff": diff, "longest_prompt": longest}


EVAL_BATCHES = 20


def bench_eval_cache(device: str, scale: str, repeats: int) -> Dict[str, Any]:
    from promptot.model import CosineModel
    from promptot.prompts import TextPrompts

    clip = tiny_clip(scale, device)
    side = SCALES[scale]["image_size"]
    # The uncached/cached ratio is bounded by the number of batches (the text side is computed once instead of once
    # per batch), so it depends on the test set's size: 20 batches is about the smallest of the 11 datasets' test
    # splits at CoOp's test batch size of 100 (DTD's 1,692 images are 17 batches, ImageNet's 50,000 are 500).
    images = torch.randn(EVAL_BATCHES, 8, 3, side, side, device=device)  # test batches of 8 images
    out: Dict[str, Any] = {}
    for n_cls in (100, 1000):
        model = CosineModel(clip, TextPrompts(clip, imagenet_names(n_cls), n_ctx=4)).to(device).eval()

        def uncached() -> None:
            with torch.no_grad():
                for x in images:
                    model(x)

        def cached() -> None:
            with torch.no_grad():
                text = model.text_side()
                for x in images:
                    model(x, text)

        tu, tc = median_time(uncached, device, repeats), median_time(cached, device, repeats)
        print(f"evaluation, {n_cls} classes, {EVAL_BATCHES} batches: cached text {tc:.3f} s vs recomputed per batch "
              f"{tu:.3f} s -> speedup {tu / tc:.2f}x (bounded by the number of batches)")
        out[str(n_cls)] = {"cached_s": tc, "uncached_s": tu, "speedup": tu / tc, "batches": EVAL_BATCHES}
    return out


def _class_folder(root: Path, n_cls: int, side: int) -> Path:
    """An ImageFolder dataset of ``n_cls`` classes with 2 training, 1 val and 1 test image each (flat colours)."""
    from PIL import Image

    names = [n.replace("/", " ").replace(" ", "_") for n in imagenet_names(n_cls)]
    for split, k in (("train", 2), ("val", 1), ("test", 1)):
        for c, name in enumerate(names):
            d = root / f"c{n_cls}" / split / f"{c:04d}_{name}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                Image.new("RGB", (side, side), ((c * 37 + i * 11) % 256, (c * 91) % 256, (c * 53) % 256)).save(
                    d / f"{i}.png")
    return root


def _build(trainer: str, data: Path, folder: str, clip_path: str, out: Path, extra: List[str]):
    import train
    import trainers  # noqa: F401  (registers the trainers)
    from promptot.engine import TRAINER_REGISTRY, build_trainer, set_random_seed

    cls = TRAINER_REGISTRY.get(trainer)
    cfg_file = ROOT / cls.configs_dir() / "miniclip.yaml"
    node = cls.config_class.CFG_NODE
    prec = [f"TRAINER.{node}.PREC", "fp32"] if "PREC" in cls.config_class.__dataclass_fields__ else []
    argv = ["--root", str(data), "--trainer", trainer, "--dataset-config-file",
            str(ROOT / "configs/datasets/image_folder.yaml"), "--config-file", str(cfg_file), "--output-dir",
            str(out), "--seed", "1", "DATASET.FOLDER", folder, "MODEL.BACKBONE.NAME", "", "MODEL.BACKBONE.PATH",
            clip_path, "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "VERBOSE", "False"] + prec + extra
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    set_random_seed(1)
    return build_trainer(cfg)


def _quiet(fn: Callable[[], Any]) -> Any:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def training_trainers() -> List[str]:
    import trainers  # noqa: F401
    from promptot.engine import TRAINER_REGISTRY
    from promptot.trainer import PromptTrainer

    names = []
    for n in sorted(TRAINER_REGISTRY.registered_names()):
        cls = TRAINER_REGISTRY.get(n)
        if isinstance(cls, type) and issubclass(cls, PromptTrainer) and cls.trains:
            names.append(n)
    return names


def bench_train_step(device: str, repeats: int, only: Optional[List[str]] = None) -> Dict[str, Any]:
    """One training step per trainer (tiny 32-px CLIP, batch 4) at 100 and 1,000 classes, text chunking on."""
    from promptot.clip import build_tiny_clip, save_openai_state_dict

    out: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip_path = str(root / "tiny.pt")
        save_openai_state_dict(build_tiny_clip("vit", image_size=32, seed=0), clip_path)
        for c in (100, 1000):
            _class_folder(root, c, 32)
        for name in only or training_trainers():
            row: Dict[str, Any] = {}
            for c in (100, 1000):
                extra = ["DATALOADER.TRAIN_X.BATCH_SIZE", "4", "MODEL.TEXT_CHUNK", "50", "OPTIM.MAX_EPOCH", "1"]
                tr = _quiet(lambda: _build(name, root, f"c{c}", clip_path, root / f"out-{name}-{c}", extra))
                tr.set_model_mode("train")
                tr.num_batches, tr.batch_idx, tr.epoch = 10, 0, 0
                batch = next(iter(tr.train_loader_x))
                step = lambda: _quiet(lambda: tr.forward_backward(batch))  # noqa: E731
                t = median_time(step, device, repeats)
                peak = peak_memory(step, device)
                row[str(c)] = {"step_s": t, "peak_bytes": peak}
            row["time_ratio"] = row["1000"]["step_s"] / row["100"]["step_s"]
            row["mem_ratio"] = row["1000"]["peak_bytes"] / max(row["100"]["peak_bytes"], 1)
            print(f"train step {name:<14} C=100 {row['100']['step_s']:.3f} s {row['100']['peak_bytes'] / 2**20:7.1f} "
                  f"MiB | C=1000 {row['1000']['step_s']:.3f} s {row['1000']['peak_bytes'] / 2**20:7.1f} MiB | "
                  f"time x{row['time_ratio']:.2f} memory x{row['mem_ratio']:.2f}")
            out[name] = row
    return out


class _Timers:
    """Accumulated wall time per named region, by wrapping methods (CUDA synchronised around each call)."""

    def __init__(self, device: str) -> None:
        self.device, self.t, self._undo, self._depth = device, {}, [], {}

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Time ``owner.attr`` under ``name``; calls nested in another call of the same name count once."""
        orig = getattr(owner, attr)
        timers = self

        def wrapped(*a: Any, **k: Any) -> Any:
            depth = timers._depth.get(name, 0)
            if depth:
                return orig(*a, **k)
            timers._depth[name] = 1
            sync(timers.device)
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                sync(timers.device)
                timers.t[name] = timers.t.get(name, 0.0) + time.perf_counter() - t0
                timers._depth[name] = 0

        setattr(owner, attr, wrapped)
        self._undo.append((owner, attr, orig))

    def restore(self) -> None:
        for owner, attr, orig in reversed(self._undo):
            setattr(owner, attr, orig)


def bench_throughput(device: str, steps: int = 5, only: Optional[List[str]] = None) -> Dict[str, Any]:
    """Training images/s per trainer on the mini CLIP and where a step's time goes."""
    from promptot.clip import PromptedCLIP
    from promptot.datasets.fmnist import CLASSNAMES
    from promptot.ot import HierarchicalOTHead
    from promptot.trainer import PromptTrainer

    out: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # 10 Fashion-MNIST class folders of random 32-px images stand in for the embedded default's data
        from PIL import Image

        for split in ("train", "val", "test"):
            for c, name in enumerate(CLASSNAMES):
                d = root / "fm" / split / name.replace(" ", "_")
                d.mkdir(parents=True, exist_ok=True)
                for i in range(4):
                    Image.new("RGB", (32, 32), (c * 20, i * 50, 128)).save(d / f"{i}.png")
        from promptot.miniclip import checkpoint_path

        clip_path = checkpoint_path()
        batch_size = 32
        for name in only or training_trainers():
            extra = ["DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.MAX_EPOCH", "1"]
            tr = _quiet(lambda: _build(name, root, "fm", clip_path, root / f"out-{name}", extra))
            tr.set_model_mode("train")
            tr.num_batches, tr.batch_idx, tr.epoch = 1000, 0, 0
            g = torch.Generator().manual_seed(0)
            batch = {"img": torch.randn(batch_size, 3, 32, 32, generator=g),
                     "label": torch.randint(0, 10, (batch_size,), generator=g)}
            _quiet(lambda: tr.forward_backward(batch))  # warm-up
            timers = _Timers(device)
            timers.wrap(PromptedCLIP, "encode_image", "image_tower")
            timers.wrap(PromptedCLIP, "encode_text", "text_tower")
            timers.wrap(HierarchicalOTHead, "forward", "ot_head")
            timers.wrap(HierarchicalOTHead, "token_term", "ot_head")  # ALIGN runs the token level before forward
            timers.wrap(PromptTrainer, "model_backward", "backward")
            timers.wrap(PromptTrainer, "model_update", "optimizer")
            try:
                sync(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    _quiet(lambda: tr.forward_backward(batch))
                sync(device)
                total = time.perf_counter() - t0
            finally:
                timers.restore()
            shares = {k: v / total for k, v in sorted(timers.t.items())}
            shares["other"] = max(0.0, 1.0 - sum(shares.values()))
            ips = steps * batch_size / total
            print(f"throughput {name:<14} {ips:8.1f} images/s | " +
                  " ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
            out[name] = {"images_per_s": ips, "step_s": total / steps, "shares": shares}
    return out


def bench_ot_head(device: str) -> Dict[str, Any]:
    """``bench/ot_head.py`` in a subprocess; its last line is ``key=value`` pairs."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "ot_head.py"), "--device", device],
                       capture_output=True, text=True, cwd=str(ROOT))
    print(r.stdout.rstrip())
    if r.returncode != 0:
        print(r.stderr[-2000:])
        return {"error": r.stderr[-2000:]}
    last = r.stdout.strip().splitlines()[-1]
    vals: Dict[str, Any] = {}
    for kv in last.split():
        k, _, v = kv.partition("=")
        try:
            vals[k] = float(v)
        except ValueError:
            vals[k] = v
    return vals


def bench_align_imagenet_step(device: str, repeats: int, precision: str, scale: str = "full",
                              n_cls: int = 1000) -> Dict[str, Any]:
    """One ALIGN training step shaped like ImageNet: B 4, C 1,000, M = N = 4, on a ViT-B/16-shaped random CLIP
    (``scale`` and ``n_cls`` shrink it for a smoke test)."""
    import trainers  # noqa: F401
    from promptot.prompts import MultiModalPrompts
    from trainers.align import ALIGNConfig, ALIGNModel

    clip = tiny_clip(scale, device, precision)
    depth = min(9, clip.text_layers, clip.vision_layers)
    c = ALIGNConfig(PREC=precision, PROMPT_DEPTH=depth, TEXT_PROMPT_NUMBER=4, VISION_PROMPT_NUMBER=4)
    learner = MultiModalPrompts(clip, imagenet_names(n_cls), n_ctx=c.N_CTX, ctx_init=c.CTX_INIT, text_depth=depth,
                                text_sets=4, coupled=True, vision_sets=4, dtype=clip.dtype)
    model = ALIGNModel(clip, learner, c).to(device).train()
    model.text_chunk = 500
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.0035)
    side = SCALES[scale]["image_size"]
    x = torch.randn(4, 3, side, side, device=device)
    y = torch.randint(0, n_cls, (4,), device=device)
    autocast = (torch.autocast(device_type=device, dtype=torch.float16) if precision == "amp"
                else __import__("contextlib").nullcontext())

    def step() -> None:
        opt.zero_grad()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    t = median_time(step, device, repeats, warmup=1)
    peak = peak_memory(step, device)
    print(f"ALIGN step, B 4, C {n_cls}, M = N = 4, {scale} scale ({precision}): {t:.3f} s, peak "
          f"{peak / 2**30:.2f} GiB")
    return {"step_s": t, "peak_bytes": peak, "precision": precision, "classes": n_cls, "scale": scale}


# ----------------------------------------------------------------------------------------------- main
BENCHES = ("text_tower", "eval_cache", "train_step", "throughput", "ot_head", "align_imagenet_step")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--scale", default=None, choices=sorted(SCALES), help="tower sizes (default: small on CPU, "
                                                                          "full on CUDA)")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "amp"],
                    help="text tower and ALIGN step precisions (CUDA: fp16 amp)")
    ap.add_argument("--only", nargs="+", choices=BENCHES, help="run only these benchmarks")
    ap.add_argument("--trainers", nargs="+", help="restrict train_step/throughput to these trainers")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON report (default bench/results/report-<host>-<time>.json)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("ERROR: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = args.scale or ("full" if args.device == "cuda" else "small")
    todo = args.only or [b for b in BENCHES if b != "align_imagenet_step" or scale == "full"]
    report: Dict[str, Any] = {
        "command": " ".join([sys.executable, "-m", "bench"] + (argv if argv is not None else sys.argv[1:])),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "device": args.device, "scale": scale,
        "machine": {"host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                    "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None},
        "results": {}, "load_average": {},
    }
    print(f"promptot benchmark suite on {args.device} ({scale} scale, {torch.get_num_threads()} threads); "
          f"load average {load():.2f}")
    for name in todo:
        before = load()
        if name == "text_tower":
            res = {p: bench_text_tower(args.device, scale, args.repeats, p) for p in args.precision}
        elif name == "eval_cache":
            res = bench_eval_cache(args.device, scale, args.repeats)
        elif name == "train_step":
            res = bench_train_step(args.device, max(1, args.repeats // 2), args.trainers)
        elif name == "throughput":
            res = bench_throughput(args.device, only=args.trainers)
        elif name == "ot_head":
            res = bench_ot_head(args.device)
        else:
            res = {p: bench_align_imagenet_step(args.device, max(1, args.repeats // 2), p) for p in args.precision}
        report["results"][name] = res
        report["load_average"][name] = [before, load()]
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / (
        f"report-{platform.node()}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"report: {out}")
    return 0
