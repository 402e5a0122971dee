"""CLI: ``python -m promptot.miniclip {pretrain,info}``."""
from __future__ import annotations

import argparse
import json
from typing import List, Optional

from . import ASSET_DIR, CHECKPOINT_FILE, DEFAULT_NAME, committed_checkpoint, cache_dir, load_recipe


def _pretrain(args: argparse.Namespace) -> int:
    from . import pretrain

    out = args.out or str(ASSET_DIR / CHECKPOINT_FILE)
    command = "python -m promptot.miniclip pretrain " + f"--seed {args.seed} --epochs {args.epochs} " \
              f"--threads {args.threads}" + (f" --out {args.out}" if args.out else "")
    rec = pretrain.pretrain(seed=args.seed, epochs=args.epochs, out=out, threads=args.threads,
                            recipe=args.recipe, command=command, progress=not args.quiet)
    z = rec["zero_shot"]
    print(f"saved {out} ({rec['file_bytes'] / 1e6:.2f} MB, {rec['parameters']:,} parameters, "
          f"sha256 {rec['sha256'][:12]}..., trained in {rec['train_seconds']} s)")
    print(f"zero-shot, held-out template {rec['eval_template']!r}:")
    print(f"  clean test (10k):          {z['test_clean']:.2f} %")
    print(f"  invert_recolor test (10k): {z['test_invert_recolor']:.2f} %")
    return 0


def _info(args: argparse.Namespace) -> int:
    from . import _verified, data

    rec = load_recipe()
    ck = committed_checkpoint()
    print(f"name:        {DEFAULT_NAME}")
    print(f"committed:   {ck} ({'present' if ck.is_file() else 'absent'}, "
          f"sha256 {'ok' if _verified(ck, rec) else 'NOT verified'})")
    print(f"cache dir:   {cache_dir()}")
    try:
        print(f"fmnist dir:  {data.find_fmnist_dir()}")
    except data.FashionMNISTNotFound as e:
        print(f"fmnist dir:  missing -- {e}")
    if rec:
        keys = ("command", "seed", "epochs", "threads", "parameters", "file_bytes", "eval_template",
                "zero_shot", "train_seconds", "versions")
        print(json.dumps({k: rec.get(k) for k in keys}, indent=2))
    else:
        print("recipe:      absent")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point."""
    from .pretrain import DEFAULT_EPOCHS, DEFAULT_SEED

    p = argparse.ArgumentParser(prog="python -m promptot.miniclip", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pt = sub.add_parser("pretrain", help="train the mini CLIP on Fashion-MNIST and save it (OpenAI format)")
    pt.add_argument("--seed", type=int, default=DEFAULT_SEED)
    pt.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    pt.add_argument("--out", default=None, help=f"checkpoint path (default: {ASSET_DIR / CHECKPOINT_FILE})")
    pt.add_argument("--recipe", default=None, help="recipe JSON path (default: RECIPE.json beside --out)")
    pt.add_argument("--threads", type=int, default=2)
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.set_defaults(fn=_pretrain)
    sub.add_parser("info", help="show the committed checkpoint and its recipe").set_defaults(fn=_info)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    from promptot.cli import run_main

    run_main(main)
