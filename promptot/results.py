"""Aggregate the JSON results records that every evaluation writes (``results.jsonl``).

``python -m promptot.results OUTPUT_ROOT [--metric accuracy] [--ci95]`` walks ``OUTPUT_ROOT``, takes the
last test record of every run directory (a re-run appends; the last evaluation wins, as in ``parse_test_res``),
groups runs that differ only by seed -- same method/dataset/backbone/shots/classes **and the same config** (the
records' ``group_hash``, or the hash of the run's ``config.yaml`` for older records) -- and prints mean ± std per
group over its distinct seeds (population std, as the reference's ``parse_test_res.py``; ``--ci95`` gives
1.96·std/√n). A seed run more than once counts once (its latest run) and is flagged; a setting run with several
configs (e.g. 4 shots with 3, 10 and 40 epochs) gets one row per config, each flagged "mixed configs", never one
average. Base-to-new pairs (``subsample_classes`` base and new, same method/dataset/shots/backbone) get a row with
H = 2·B·N/(B+N) computed from the seed means of B and N, which is how the papers report it.

For the papers' tables, comparisons and figures see ``python -m promptot.report``.
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


def _group_of(rec: dict, run_dir: str) -> str:
    """The record's group hash (config without seed and output folders); for records written before it existed,
    the hash of the run's ``config.yaml``; "?" when neither is there."""
    if rec.get("group_hash"):
        return str(rec["group_hash"])
    path = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(path):
        from .config import config_from_yaml, group_hash

        try:
            return group_hash(config_from_yaml(path))
        except Exception:  # noqa: BLE001 - unreadable: the group stays unknown
            pass
    return "?"


def load_records(root: str, split: str = "test") -> List[dict]:
    """The last ``split`` record of every ``results.jsonl`` under ``root`` (with its ``run_dir`` and ``group``)."""
    out = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".sweep" and ".changed-" not in d)
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
            out.append(dict(recs[-1], run_dir=dirpath, group=_group_of(recs[-1], dirpath)))
    return sorted(out, key=lambda r: r["run_dir"])


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def summarize(records: Iterable[dict], metric: str = "accuracy", ci95: bool = False) -> List[Dict]:
    """One row per group of runs that differ only by seed (same setting and same config): n distinct seeds, the
    seeds, mean and spread (std or 95% half-width) over one value per seed (its latest run), the config (group
    hash) and flags (seeds run more than once; a setting run with several configs)."""
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r.get(k) for k in GROUP_KEYS) + (r.get("group", "?"),)].append(r)
    configs_per_setting: Dict[tuple, set] = defaultdict(set)
    for key in groups:
        configs_per_setting[key[:-1]].add(key[-1])
    rows = []
    for key, recs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        by_seed: Dict[object, List[dict]] = defaultdict(list)
        for r in sorted(recs, key=lambda r: (str(r.get("time", "")), r["run_dir"])):
            by_seed[r.get("seed")].append(r)
        vals = [float(runs[-1]["metrics"][metric]) for runs in by_seed.values()]
        m, s = _mean_std(vals)
        flags = [f"seed {seed} run {len(runs)} times (latest used)" for seed, runs in sorted(
            by_seed.items(), key=lambda kv: str(kv[0])) if len(runs) > 1]
        n_cfg = len(configs_per_setting[key[:-1]])
        if n_cfg > 1:
            flags.append(f"mixed configs: this setting was run with {n_cfg} configs, shown as separate rows")
        rows.append(dict(zip(GROUP_KEYS, key[:-1]), config=key[-1], n=len(vals), runs=len(recs),
                         seeds=sorted(by_seed, key=str), mean=m,
                         spread=1.96 * s / math.sqrt(len(vals)) if ci95 else s, flags=flags))
    return rows


def harmonic_rows(rows: Sequence[Dict]) -> List[Dict]:
    """H = 2BN/(B+N) from the seed means of matching base and new rows (one config each; a setting with several
    base or new configs gets no H, its rows are flagged already)."""
    sides: Dict[str, Dict[tuple, List[Dict]]] = {"base": defaultdict(list), "new": defaultdict(list)}
    for r in rows:
        if r["subsample_classes"] in sides:
            sides[r["subsample_classes"]][tuple(r[k] for k in GROUP_KEYS[:-1])].append(r)
    out = []
    for k, bs in sides["base"].items():
        ns = sides["new"].get(k, [])
        if len(bs) != 1 or len(ns) != 1:
            continue
        b, n = bs[0], ns[0]
        out.append(dict(b, subsample_classes="H", config=f"{b['config']}/{n['config']}", n=min(b["n"], n["n"]),
                        mean=2 * b["mean"] * n["mean"] / (b["mean"] + n["mean"]) if b["mean"] + n["mean"] > 0 else 0.0,
                        spread=float("nan"), flags=[]))
    return out


def format_table(rows: Sequence[Dict], metric: str, ci95: bool) -> str:
    """The rows of :func:`summarize` (and :func:`harmonic_rows`) as a text table."""
    spread = "95% CI" if ci95 else "std"
    body = [[r["method"], r["dataset"], r["backbone"], r["num_shots"] if (r["num_shots"] or 0) > 0 else "-",
             r["subsample_classes"], r["config"], r["n"],
             f"{r['mean']:.2f}", "-" if math.isnan(r["spread"]) else f"{r['spread']:.2f}",
             "; ".join(r.get("flags", []))] for r in rows]
    return tabulate(body, headers=["method", "dataset", "backbone", "shots", "classes", "config", "seeds", metric,
                                   spread, "flags"], disable_numparse=True)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns 0, or 1 when there is nothing to summarise."""
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
