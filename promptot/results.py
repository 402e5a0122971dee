"""Aggregate the JSON results records that every evaluation writes (``results.jsonl``).

``python -m promptot.results OUTPUT_ROOT [--metric accuracy] [--ci95]`` walks ``OUTPUT_ROOT``, takes the
last test record of every run directory (a re-run appends; the last evaluation wins, as in ``parse_test_res``),
groups runs that differ only by seed, and prints mean ± std per group (population std, as the reference's
``parse_test_res.py``; ``--ci95`` gives 1.96·std/√n). Base-to-new pairs (``subsample_classes`` base and new,
same method/dataset/shots/backbone) get a row with H = 2·B·N/(B+N) computed from the seed means of B and N,
which is how the papers report it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from tabulate import tabulate

GROUP_KEYS = ("method", "dataset", "backbone", "num_shots", "subsample_classes")


def load_records(root: str, split: str = "test") -> List[dict]:
    """The last ``split`` record of every ``results.jsonl`` under ``root`` (with its ``run_dir``)."""
    out = []
    for dirpath, _, files in os.walk(root):
        if "results.jsonl" not in files:
            continue
        path = os.path.join(dirpath, "results.jsonl")
        recs = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON ({e}); delete the broken line") from e
        recs = [r for r in recs if r.get("split") == split]
        if recs:
            out.append(dict(recs[-1], run_dir=dirpath))
    return sorted(out, key=lambda r: r["run_dir"])


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def summarize(records: Iterable[dict], metric: str = "accuracy", ci95: bool = False) -> List[Dict]:
    """One row per group of runs that differ only by seed: n, seeds, mean, spread (std or 95% half-width)."""
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r.get(k) for k in GROUP_KEYS)].append(r)
    rows = []
    for key, recs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        vals = [float(r["metrics"][metric]) for r in recs]
        m, s = _mean_std(vals)
        rows.append(dict(zip(GROUP_KEYS, key), n=len(vals), seeds=sorted(r.get("seed") for r in recs), mean=m,
                         spread=1.96 * s / math.sqrt(len(vals)) if ci95 else s))
    return rows


def harmonic_rows(rows: Sequence[Dict]) -> List[Dict]:
    """H = 2BN/(B+N) from the seed means of matching base and new rows."""
    index = {tuple(r[k] for k in GROUP_KEYS[:-1]) + (r["subsample_classes"],): r for r in rows}
    out = []
    for r in rows:
        if r["subsample_classes"] != "base":
            continue
        new = index.get(tuple(r[k] for k in GROUP_KEYS[:-1]) + ("new",))
        if new is None:
            continue
        b, n = r["mean"], new["mean"]
        out.append(dict(r, subsample_classes="H", n=min(r["n"], new["n"]), seeds=r["seeds"],
                        mean=2 * b * n / (b + n) if b + n > 0 else 0.0, spread=float("nan")))
    return out


def format_table(rows: Sequence[Dict], metric: str, ci95: bool) -> str:
    spread = "95% CI" if ci95 else "std"
    body = [[r["method"], r["dataset"], r["backbone"], r["num_shots"] if (r["num_shots"] or 0) > 0 else "-",
             r["subsample_classes"], r["n"],
             f"{r['mean']:.2f}", "-" if math.isnan(r["spread"]) else f"{r['spread']:.2f}"] for r in rows]
    return tabulate(body, headers=["method", "dataset", "backbone", "shots", "classes", "seeds", metric, spread],
                    disable_numparse=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="directory holding run directories (searched recursively)")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "error_rate", "macro_f1", "perclass_accuracy"])
    p.add_argument("--ci95", action="store_true", help="95%% confidence half-width instead of the std")
    args = p.parse_args(argv)
    records = load_records(args.root)
    if not records:
        print(f"No finished evaluations (results.jsonl with a test record) under {args.root}")
        return 1
    rows = summarize(records, args.metric, args.ci95)
    print(format_table(list(rows) + harmonic_rows(rows), args.metric, args.ci95))
    return 0


if __name__ == "__main__":
    from promptot.cli import run_main

    run_main(main)
