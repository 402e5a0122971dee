"""Assemble the report: sections per protocol (:mod:`.tables`), problems, figures; write Markdown, CSV, PNG, SVG."""
from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .logs import run_diagnostics
from .plots import plot_base2new, plot_diagnostics, plot_fewshot
from .published import Published
from .runs import Run
from .tables import Section, base2new_section, fewshot_section, transfer_section, zeroshot_section

ALL = ("fewshot", "base2new", "xd", "dg", "zeroshot")
CSV_FIELDS = ["protocol", "method", "backbone", "origin", "dataset", "shots", "setting", "mean", "std", "n_seeds", "seeds",
              "values", "status", "flags", "published", "delta", "published_table", "published_source"]


@dataclass
class Report:
    sections: List[Section] = field(default_factory=list)
    diagnostics: Dict[str, Dict[str, Dict[int, float]]] = field(default_factory=dict)
    n_runs: int = 0
    files: List[str] = field(default_factory=list)

    @property
    def problems(self) -> List[str]:
        return [p for s in self.sections for p in s.problems]


def protocol_datasets(protocols=None, names: Optional[Dict[str, str]] = None) -> Dict[str, List[str]]:
    """``DATASET.NAME`` lists of the protocol file's protocols (targets for transfer protocols)."""
    if protocols is None:
        return {}
    names = names or {}
    return {p: [names.get(d, d) for d in spec.datasets] for p, spec in protocols.protocols.items()}


def ot_diagnostics(runs: Sequence[Run], name: str = "plan_ent") -> Dict[str, Dict[str, Dict[int, float]]]:
    """method (backbone) -> "dataset K-shot [subsample]" -> epoch -> mean over seeds of ``name``."""
    acc: Dict[str, Dict[str, Dict[int, List[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in runs:
        if not r.trained_here:
            continue
        per_epoch = run_diagnostics(r.run_dir).get(name)
        if not per_epoch:
            continue
        line = f"{r.dataset} {r.shots}-shot" + (f" {r.subsample}" if r.subsample != "all" else "")
        for e, v in per_epoch.items():
            acc[f"{r.method} ({r.backbone})"][line][e].append(v)
    return {m: {ln: {e: sum(v) / len(v) for e, v in sorted(per.items())} for ln, per in lines.items()}
            for m, lines in acc.items()}


def build_report(runs: Sequence[Run], protocols=None, selected: Sequence[str] = ALL,
                 published: Sequence[Published] = (), names: Optional[Dict[str, str]] = None,
                 datasets: Optional[Sequence[str]] = None, metric: str = "accuracy") -> Report:
    """Sections for the ``selected`` protocols that have runs. ``datasets`` (``DATASET.NAME`` s) replaces the
    protocol's dataset list for averages."""
    lists = protocol_datasets(protocols, names)
    rep = Report(n_runs=len(runs))

    def dl(p: str) -> List[str]:
        return list(datasets) if datasets else lists.get(p, [])

    builders = {
        "fewshot": lambda: fewshot_section(runs, dl("fewshot"), published, metric),
        "base2new": lambda: base2new_section(runs, dl("base2new"), published, metric),
        "xd": lambda: transfer_section("xd", "Cross-dataset transfer", runs, dl("xd"), published, others=True,
                                       exclude=lists.get("dg", []), metric=metric),
        "dg": lambda: transfer_section("dg", "Domain generalisation", runs, dl("dg"), published, metric=metric),
        "zeroshot": lambda: zeroshot_section(runs, dl("zeroshot"), metric),
    }
    for p in selected:
        sec = builders[p]()
        if sec is not None:
            rep.sections.append(sec)
    if "fewshot" in selected or "base2new" in selected:
        rep.diagnostics = ot_diagnostics(runs)
    return rep


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def markdown(rep: Report, title: str = "Results") -> str:
    """The report as Markdown: per protocol its tables, published comparisons and problems."""
    out = [f"# {title}", "", f"{rep.n_runs} run(s). Cells: mean ± std over seeds (population std, as CoOp's "
           "parse_test_res.py); `missing`: no finished run; `mixed configs`: runs of different configs, not averaged.",
           ""]
    for sec in rep.sections:
        out += [f"## {sec.title}", ""]
        out += [f"_{n}_" for n in sec.notes] + ([""] if sec.notes else [])
        for t in sec.tables:
            out += [f"### {t.title}", "", _md_table(t.columns, t.rows), ""]
        if sec.comparisons:
            out += ["### Published numbers (confirmed) and our difference", "",
                    _md_table(["method", "dataset", "shots", "metric", "ours", "published", "Δ", "table"],
                              [[c["row"], c["dataset"], str(c["shots"]), c["setting"], f"{c['ours']:.2f}",
                                f"{c['published']:.2f}", f"{c['delta']:+.2f}", c["table"]] for c in sec.comparisons]),
                    ""]
        if sec.problems:
            out += ["**Problems**", ""] + [f"- {p}" for p in sec.problems] + [""]
    if not rep.sections:
        out.append("No finished runs for the selected protocols.")
    return "\n".join(out) + "\n"


def write_report(rep: Report, out_dir: str, title: str = "Results", plots: bool = True) -> List[str]:
    """``report.md``, ``<protocol>.csv`` and the figures into ``out_dir``; returns the files written."""
    os.makedirs(out_dir, exist_ok=True)
    files = []
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(markdown(rep, title))
    files.append(path)
    for sec in rep.sections:
        path = os.path.join(out_dir, f"{sec.protocol}.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(sec.csv)
        files.append(path)
        if sec.comparisons:
            path = os.path.join(out_dir, f"{sec.protocol}_published.csv")
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(sec.comparisons[0]))
                w.writeheader()
                w.writerows(sec.comparisons)
            files.append(path)
        if not plots:
            continue
        if sec.protocol == "fewshot" and sec.plot_data.get("datasets"):
            files += plot_fewshot(sec.plot_data, out_dir)
        if sec.protocol == "base2new" and sec.plot_data:
            files += plot_base2new(sec.plot_data, out_dir)
    if plots and rep.diagnostics:
        files += plot_diagnostics(rep.diagnostics, out_dir)
    rep.files = files
    return files
