"""Table cells from runs: mean ± std over seeds, missing and mixed cells, dataset averages.

Rules (the papers' and CoOp's ``parse_test_res.py``):

- a cell's runs must share one config (group hash, and for evaluations the loaded run's too); runs of several
  configs make the cell *mixed*: it shows no number and is listed as a problem, never averaged;
- one value per seed: a seed run twice counts once (the latest run) and is flagged;
- mean and **population** standard deviation (ddof 0) over seeds, as ``parse_test_res.py``;
- base-to-new: H = 2·B·N/(B+N) from the seed means of B and N; an average row averages B and N over datasets and
  takes H of those averages;
- dataset averages need every dataset of the protocol: a missing or mixed dataset makes the average missing,
  never an average over fewer datasets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .runs import Run

Row = Tuple[str, str, str]  # method, backbone, origin


@dataclass
class Cell:
    """The runs of one table cell and their statistics."""

    runs: List[Run] = field(default_factory=list)
    metric: str = "accuracy"
    mixed: bool = False
    duplicates: Dict[int, int] = field(default_factory=dict)  #: seed -> number of runs
    values: Dict[Optional[int], float] = field(default_factory=dict)  #: seed -> value used

    @classmethod
    def of(cls, runs: Iterable[Run], metric: str = "accuracy") -> "Cell":
        runs = sorted(runs, key=lambda r: (r.time, r.run_dir))
        c = cls(runs=runs, metric=metric)
        c.mixed = len({r.identity for r in runs}) > 1
        counts: Dict[Optional[int], int] = {}
        for r in runs:  # sorted by time: the latest run of a seed wins
            if metric in r.metrics:
                c.values[r.seed] = float(r.metrics[metric])
                counts[r.seed] = counts.get(r.seed, 0) + 1
        c.duplicates = {s: n for s, n in counts.items() if n > 1 and s is not None}
        return c

    @property
    def present(self) -> bool:
        return bool(self.values) and not self.mixed

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def seeds(self) -> List[Optional[int]]:
        return sorted(self.values, key=lambda s: -1 if s is None else s)

    @property
    def mean(self) -> Optional[float]:
        if not self.present:
            return None
        v = list(self.values.values())
        return sum(v) / len(v)

    @property
    def std(self) -> Optional[float]:
        """Population standard deviation over seeds (ddof 0), as ``parse_test_res.py``."""
        m = self.mean
        if m is None:
            return None
        v = list(self.values.values())
        return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))

    def flags(self) -> List[str]:
        out = []
        if self.mixed:
            groups = sorted({r.identity for r in self.runs})
            out.append(f"mixed configs ({len(groups)}: {', '.join(groups)}) not averaged: "
                       + "; ".join(r.run_dir for r in self.runs))
        for s, k in sorted(self.duplicates.items()):
            out.append(f"seed {s} run {k} times (the latest is used)")
        return out

    def text(self, digits: int = 2) -> str:
        if self.mixed:
            return "mixed configs"
        if not self.values:
            return "missing"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass
class Summary:
    """A derived value (an average, H) with its seed spread when defined."""

    mean: Optional[float]
    std: Optional[float] = None
    n: int = 0
    note: str = ""  #: why it is missing, e.g. "missing 2/11 datasets"
    missing: Tuple[str, ...] = ()  #: the datasets without a (single-config) value

    def text(self, digits: int = 2) -> str:
        if self.mean is None:
            return self.note or "missing"
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def average(cells: Sequence[Tuple[str, Optional[Cell]]]) -> Summary:
    """Mean over datasets of the cells' seed means; missing unless every dataset is present. The std is the
    spread over seeds of the per-seed averages, defined when every dataset has the same seeds."""
    absent = [d for d, c in cells if c is None or not c.present]
    if not cells or absent:
        return Summary(None, note=f"missing {len(absent)}/{len(cells)} datasets" if cells else "missing",
                       missing=tuple(absent))
    means = [c.mean for _, c in cells]
    mean = sum(means) / len(means)  # type: ignore[arg-type]
    seed_sets = {tuple(c.seeds) for _, c in cells}
    std = None
    if len(seed_sets) == 1:
        seeds = next(iter(seed_sets))
        per_seed = [sum(c.values[s] for _, c in cells) / len(cells) for s in seeds]
        m = sum(per_seed) / len(per_seed)
        std = math.sqrt(sum((x - m) ** 2 for x in per_seed) / len(per_seed)) if len(per_seed) > 1 else None
    return Summary(mean, std, n=len(cells))


def harmonic(base: Optional[float], new: Optional[float]) -> Optional[float]:
    """H = 2·B·N/(B+N) (None when either is missing)."""
    if base is None or new is None:
        return None
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def row_label(row: Row) -> str:
    """"CoOp (ViT-B/16)", with " [tags]" for ingested logs and for variants of one method (their config)."""
    method, backbone, origin = row
    return f"{method} ({backbone})" + (f" [{origin}]" if origin else "")


def order_rows(rows: Iterable[Row]) -> List[Row]:
    """Zero-shot rows first, then by method name and backbone."""
    return sorted(set(rows), key=lambda r: (not r[0].startswith("Zeroshot"), r[0], r[1], r[2]))
