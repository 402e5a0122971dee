"""The embedded default: zero-shot CLIP, CoOp and ALIGN on a shifted Fashion-MNIST domain with the
project's mini CLIP, then a comparison table. Needs no network and no downloaded weights.

    python scripts/demo.py [--root DATA] [--output-dir OUT] [--shots 16] [--seed 1] [--methods ZeroshotCLIP CoOp ALIGN]

The mini CLIP is a 3.4M-parameter CLIP pretrained here on Fashion-MNIST: it checks the pipeline and
the methods end to end, and says nothing about accuracy with OpenAI's CLIP. A finished run (its
results.jsonl holds a test record for the same config) is reused, not redone; a crashed one resumes.

Besides printing the table it writes it to OUT/demo.md and OUT/demo.csv, and a bar chart of the accuracies
(zero-shot CLIP as a dashed line) to OUT/demo.png and OUT/demo.svg.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"FashionMNISTShift": "configs/datasets/fashion_mnist_shift.yaml",
            "FashionMNIST": "configs/datasets/fashion_mnist.yaml"}
METHODS = {
    # name: (trainer, config, eval-only)
    "ZeroshotCLIP": ("ZeroshotCLIP", "configs/trainers/CoOp/miniclip.yaml", True),
    "CoOp": ("CoOp", "configs/trainers/CoOp/miniclip.yaml", False),
    "CoCoOp": ("CoCoOp", "configs/trainers/CoCoOp/miniclip.yaml", False),
    "PLOT": ("PLOT", "configs/trainers/PLOT/miniclip.yaml", False),
    "ALIGN": ("ALIGN", "configs/trainers/ALIGN/miniclip.yaml", False),
    "MaPLe": ("MaPLe", "configs/trainers/MaPLe/miniclip.yaml", False),
    "IVLP": ("IVLP", "configs/trainers/IVLP/miniclip.yaml", False),
    "VPT": ("VPT", "configs/trainers/VPT/miniclip.yaml", False),
    "PromptSRC": ("PromptSRC", "configs/trainers/PromptSRC/miniclip.yaml", False),
    "KgCoOp": ("KgCoOp", "configs/trainers/KgCoOp/miniclip.yaml", False),
    "ProGrad": ("ProGrad", "configs/trainers/ProGrad/miniclip.yaml", False),
    "CoPL": ("CoPL", "configs/trainers/CoPL/miniclip.yaml", False),
    "DPT": ("DPT", "configs/trainers/DPT/miniclip.yaml", False),
    "VLP": ("VLP", "configs/trainers/VLP/miniclip.yaml", False),
    "VPT-DPT": ("VPT", "configs/trainers/VPT/miniclip_dpt.yaml", False),
}


def last_test_record(out: Path):
    f = out / "results.jsonl"
    if not f.is_file():
        return None
    recs = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    recs = [r for r in recs if r.get("split") == "test"]
    return recs[-1] if recs else None


def run(method: str, dataset: str, args) -> dict:
    trainer, cfg, eval_only = METHODS[method]
    shots = 0 if eval_only else args.shots
    out = Path(args.output_dir) / dataset / method / (f"{shots}shots" if shots else "zeroshot") / f"seed{args.seed}"
    rec = last_test_record(out)
    if rec is not None and (eval_only or rec.get("epoch", 0) > 0):
        print(f"[{method}] reusing the finished run in {out}")
        return rec
    cmd = [sys.executable, str(ROOT / "train.py"), "--root", args.root, "--seed", str(args.seed), "--trainer", trainer,
           "--dataset-config-file", str(ROOT / DATASETS[dataset]), "--config-file", str(ROOT / cfg),
           "--output-dir", str(out)]
    if eval_only:
        cmd.append("--eval-only")
    if shots:
        cmd += ["DATASET.NUM_SHOTS", str(shots)]
    print(f"[{method}] {' '.join(cmd[1:])}")
    t0 = time.time()
    r = subprocess.run(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL if args.quiet else None)
    if r.returncode != 0:
        raise SystemExit(f"[{method}] failed (exit {r.returncode}); see {out / 'log.txt'}")
    rec = last_test_record(out)
    if rec is None:
        raise SystemExit(f"[{method}] finished without a test record in {out / 'results.jsonl'}")
    rec["wall_s"] = round(time.time() - t0, 1)
    print(f"[{method}] accuracy {rec['metrics']['accuracy']:.1f}% in {rec['wall_s']} s")
    return rec


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT / "data"), help="where the Fashion-MNIST image folders are written")
    p.add_argument("--output-dir", default=str(ROOT / "output" / "demo"))
    p.add_argument("--dataset", default="FashionMNISTShift", choices=sorted(DATASETS))
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=["ZeroshotCLIP", "CoOp", "ALIGN"], choices=sorted(METHODS))
    p.add_argument("--quiet", action="store_true", help="hide the training logs (they stay in each log.txt)")
    args = p.parse_args(argv)
    print("promptot demo: a 3.4M-parameter CLIP pretrained here on Fashion-MNIST, adapted to an inverted and "
          "recoloured Fashion-MNIST domain. A pipeline check, not a stand-in for OpenAI CLIP's accuracy.")
    rows = []
    for m in args.methods:
        rec = run(m, args.dataset, args)
        rows.append([m, rec["dataset"], rec["num_shots"] if rec["num_shots"] > 0 else "-", rec["seed"],
                     f"{rec['metrics']['accuracy']:.1f}", f"{rec['metrics']['macro_f1']:.1f}",
                     rec.get("wall_s", "reused")])
    headers = ["method", "dataset", "shots", "seed", "accuracy %", "macro F1 %", "time (s)"]
    print()
    print(tabulate(rows, headers=headers, disable_numparse=True))  # keep "58.0", not 58
    files = write_outputs(rows, headers, Path(args.output_dir), args)
    print(f"\nRecords: {args.output_dir}/**/results.jsonl (one JSON line per evaluation)")
    print(f"Table and figure: {', '.join(str(f) for f in files)}")


def write_outputs(rows, headers, out: Path, args) -> list:
    """demo.md and demo.csv (the table), demo.png and demo.svg (accuracy per method, zero-shot as a line)."""
    sys.path.insert(0, str(ROOT))
    from promptot.report.plots import plot_accuracy_bars

    out.mkdir(parents=True, exist_ok=True)
    md = out / "demo.md"
    md.write_text(f"Mini CLIP on {args.dataset}, {args.shots} shots, seed {args.seed} (test accuracy of each method; "
                  "a pipeline check, not OpenAI CLIP's accuracy)\n\n"
                  + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n")
    with open(out / "demo.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows(rows)
    zs = [r for r in rows if r[0].startswith("Zeroshot")]
    bars = [(r[0], float(r[4]), None) for r in rows if not r[0].startswith("Zeroshot")]
    figs = plot_accuracy_bars(bars or [(r[0], float(r[4]), None) for r in zs], str(out), name="demo",
                              title=f"Mini CLIP on {args.dataset}, {args.shots} shots, seed {args.seed}",
                              baseline=(f"{zs[0][0]} {float(zs[0][4]):.1f}%", float(zs[0][4])) if zs and bars else None)
    return [md, out / "demo.csv"] + [Path(p) for p in figs]


if __name__ == "__main__":
    main()
