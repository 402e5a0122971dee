"""Figures beside the tables (matplotlib, PNG + SVG):

- ``fewshot``: accuracy vs shots per dataset and averaged, one line per method with a shaded ±std band,
  zero-shot CLIP as a horizontal line;
- ``base2new``: grouped bars Base / New / H per method, per dataset and averaged;
- ``ot_diagnostics``: the OT trainers' normalised prompt-level plan entropy over training (``plan_ent`` of the
  training lines; 1 = uniform plan), mean over seeds, where logged;
- ``accuracy``: one bar per method (the demo's figure).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def _save(fig, out_dir: str, name: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _grid(n: int) -> Tuple[int, int]:
    cols = min(4, n)
    return int(math.ceil(n / cols)), cols


def plot_fewshot(data: Dict, out_dir: str, name: str = "fewshot") -> List[str]:
    """``data`` is :func:`~.tables.fewshot_section`'s ``plot_data``."""
    panels = data["datasets"]
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colours: Dict[str, str] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = {}
    for ax, (title, panel) in zip(axes.flat, panels.items()):
        for label, (shots, means, stds) in panel["lines"].items():
            colours.setdefault(label, cycle[len(colours) % len(cycle)])
            pts = [(k, m, s) for k, m, s in zip(shots, means, stds) if m is not None]
            if not pts:
                continue
            xs, ms, ss = zip(*pts)
            (h,) = ax.plot(xs, ms, marker="o", color=colours[label], label=label)
            handles[label] = h
            lo = [m - (s or 0.0) for m, s in zip(ms, ss)]
            hi = [m + (s or 0.0) for m, s in zip(ms, ss)]
            ax.fill_between(xs, lo, hi, color=colours[label], alpha=0.2, linewidth=0)
        for label, (m, s) in panel["zeroshot"].items():
            colours.setdefault(label, cycle[len(colours) % len(cycle)])
            h = ax.axhline(m, color=colours[label], linestyle="--", label=label)
            handles[label] = h
            if s:
                ax.axhspan(m - s, m + s, color=colours[label], alpha=0.1)
        if not ax.lines:
            ax.text(0.5, 0.5, "missing (see the table)", transform=ax.transAxes, ha="center", va="center",
                    fontsize=9, color="grey")
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(data["shots"]) / 1.4, max(data["shots"]) * 1.4)
        ax.set_xticks(data["shots"])
        ax.set_xticklabels([str(k) for k in data["shots"]])
        ax.set_title("Average" if title == "average" else title, fontsize=10)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)),
               bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(handles) / 4)), frameon=False)
    fig.tight_layout()
    return _save(fig, out_dir, name)


def plot_base2new(data: Dict[str, Dict[str, Tuple[Optional[float], Optional[float], Optional[float]]]],
                  out_dir: str, name: str = "base2new") -> List[str]:
    """Grouped bars (Base, New, H) per method; one panel per dataset and the average."""
    rows, cols = _grid(len(data))
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.5, 1.6 * max(len(b) for b in data.values()) + 1.5) * cols,
                                                  3.6 * rows), squeeze=False)
    for ax, (title, bars) in zip(axes.flat, data.items()):
        labels = list(bars)
        width = 0.27
        for i, (metric, colour) in enumerate((("Base", "#4c72b0"), ("New", "#dd8452"), ("H", "#55a868"))):
            vals = [bars[lb][i] for lb in labels]
            xs = [j + (i - 1) * width for j in range(len(labels))]
            ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None], width,
                   color=colour, label=metric)
            for x, v in zip(xs, vals):
                if v is None:
                    ax.text(x, 1, "missing", rotation=90, ha="center", va="bottom", fontsize=7, clip_on=True)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Average" if title == "average" else title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        top = max([v for b in bars.values() for v in b if v is not None], default=100.0)
        ax.set_ylim(0, top * 1.25)
        ax.legend(fontsize=8, ncol=3, loc="upper center")
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out_dir, name)


def plot_diagnostics(series: Dict[str, Dict[str, Dict[int, float]]], out_dir: str, name: str = "ot_diagnostics",
                     ylabel: str = "prompt-level plan entropy (1 = uniform)") -> List[str]:
    """``series``: panel (method) -> line label -> epoch -> value."""
    rows, cols = _grid(len(series))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, series.items()):
        for label, per_epoch in lines.items():
            xs = sorted(per_epoch)
            ax.plot(xs, [per_epoch[x] for x in xs], marker=".", label=label)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out_dir, name)


def plot_accuracy_bars(values: Sequence[Tuple[str, float, Optional[float]]], out_dir: str, name: str = "accuracy",
                       title: str = "", baseline: Optional[Tuple[str, float]] = None) -> List[str]:
    """One bar per (label, mean, std); ``baseline`` (label, value) as a dashed horizontal line."""
    fig, ax = plt.subplots(figsize=(1.3 * len(values) + 2.5, 3.6))
    labels = [v[0] for v in values]
    spread = [v[2] for v in values]
    ax.bar(labels, [v[1] for v in values], yerr=[s or 0.0 for s in spread] if any(spread) else None, capsize=4,
           color="#4c72b0")
    for i, v in enumerate(values):
        ax.text(i, v[1] + (v[2] or 0.0) + 0.5, f"{v[1]:.1f}", ha="center", va="bottom", fontsize=8)
    if baseline is not None:
        ax.axhline(baseline[1], color="#c44e52", linestyle="--", label=baseline[0])
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    ax.set_ylim(0, max(v[1] + (v[2] or 0.0) for v in values) * 1.12)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out_dir, name)
