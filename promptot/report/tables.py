"""The report's tables, one section per protocol, from runs (see :mod:`.aggregate` for the rules).

- few-shot: per dataset and for the average over the protocol's datasets, methods × shots (zero-shot CLIP as its
  own column), published rows and our difference where a confirmed number exists;
- base-to-new: per dataset and averaged, Base / New / H with the published numbers and ΔH;
- cross-dataset and domain generalisation: the source accuracy, every target and the target average;
- zero-shot: one accuracy per dataset.

Each section also gives long-format CSV rows (one per cell, with seeds, values, flags, published and Δ).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

from .aggregate import Cell, Row, Summary, average, harmonic, order_rows, row_label
from .published import Published
from .runs import Run


@dataclass
class Table:
    title: str
    columns: List[str]
    rows: List[List[str]]


@dataclass
class Section:
    protocol: str
    title: str
    tables: List[Table] = field(default_factory=list)
    csv: List[Dict] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    plot_data: Dict = field(default_factory=dict)
    comparisons: List[Dict] = field(default_factory=list)  #: every confirmed published number we have a value for


def _fmt(v: Optional[float], digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _delta(ours: Optional[float], pub: Optional[float], digits: int = 2) -> str:
    return "" if ours is None or pub is None else f"{ours - pub:+.{digits}f}"


def _datasets_for(runs_datasets: Set[str], protocol_names: Sequence[str]) -> List[str]:
    """The datasets an average runs over: the protocol's when the runs touch them, else those present."""
    if protocol_names and runs_datasets & set(protocol_names):
        return list(protocol_names)
    return sorted(runs_datasets)


def _configs(runs: Sequence[Run]) -> Set[str]:
    return {r.config_file for r in runs if r.config_file}


def _visible(row_datasets: Set[str], d: str, averaged: Sequence[str]) -> bool:
    """A row is shown in a dataset's table when it ran there, or when the dataset is one the row's average needs
    (then as missing); in the average table when it ran on one of the averaged datasets."""
    touches = bool(row_datasets & set(averaged))
    if d == "average":
        return touches
    return d in row_datasets or (d in averaged and touches)


def _row_configs(runs: Sequence[Run]) -> Dict[Row, Set[str]]:
    out: Dict[Row, Set[str]] = defaultdict(set)
    for r in runs:
        if r.config_file:
            out[r.row].add(r.config_file)
    return out


def _problems(where: str, cell: Optional[Cell]) -> List[str]:
    return [f"{where}: {f}" for f in (cell.flags() if cell else [])]


def _csv_row(protocol: str, row: Row, dataset: str, setting: str, cell: Optional[Cell] = None,
             summary: Optional[Summary] = None, pub: Optional[Published] = None, shots: Optional[int] = None) -> Dict:
    method, backbone, origin = row
    mean = cell.mean if cell is not None else (summary.mean if summary else None)
    std = cell.std if cell is not None else (summary.std if summary else None)
    status = ("mixed" if cell is not None and cell.mixed else "ok" if mean is not None else "missing")
    return {
        "protocol": protocol, "method": method, "backbone": backbone, "origin": origin, "dataset": dataset,
        "shots": "" if shots is None else shots, "setting": setting, "mean": _fmt(mean, 4), "std": _fmt(std, 4),
        "n_seeds": cell.n if cell is not None else (summary.n if summary else 0),
        "seeds": " ".join(str(s) for s in cell.seeds if s is not None) if cell is not None else "",
        "values": " ".join(f"{cell.values[s]:.4f}" for s in cell.seeds) if cell is not None else "",
        "status": status, "flags": " | ".join(cell.flags()) if cell is not None else (summary.note if summary else ""),
        "published": _fmt(pub.value) if pub else "", "delta": _delta(mean, pub.value if pub else None, 4),
        "published_table": pub.table if pub else "", "published_source": pub.source if pub else "",
    }


def _find_pubs(pubs: Sequence[Published], protocol: str, row: Row, dataset: str, setting: str,
               configs: Set[str]) -> List[Published]:
    return [p for p in pubs if p.protocol == protocol and p.dataset == dataset and p.setting == setting
            and p.matches(row[0], row[1], configs)]


def _find_pub(pubs: Sequence[Published], protocol: str, row: Row, dataset: str, setting: str,
              configs: Set[str]) -> Optional[Published]:
    found = _find_pubs(pubs, protocol, row, dataset, setting, configs)
    return found[0] if found else None


def compare(sec: "Section", pubs: Sequence[Published], configs_of: Dict[Row, Set[str]]) -> None:
    """Fill ``sec.comparisons``: for every CSV cell with a value, every confirmed published number for it."""
    for r in sec.csv:
        if r["status"] != "ok" or r["mean"] == "":
            continue
        row = (r["method"], r["backbone"], r["origin"])
        setting = "accuracy" if r["setting"] in ("target", "target average") else r["setting"]
        for p in _find_pubs(pubs, sec.protocol, row, r["dataset"], setting, configs_of.get(row, set())):
            ours = float(r["mean"])
            sec.comparisons.append({"row": row_label(row), "dataset": r["dataset"], "shots": r["shots"],
                                    "setting": r["setting"], "ours": ours, "published": p.value,
                                    "delta": ours - p.value, "table": p.table, "source": p.source,
                                    "paper_name": p.paper_name})


# ------------------------------------------------------------------------------------------------ few-shot
def fewshot_section(runs: Sequence[Run], protocol_datasets: Sequence[str], pubs: Sequence[Published],
                    metric: str = "accuracy") -> Optional[Section]:
    """Few-shot tables (methods × shots per dataset and averaged) from runs trained on all classes; None without
    any. ``protocol_datasets`` (DATASET.NAMEs) are what the average needs."""
    trained = [r for r in runs if r.subsample == "all" and r.trained_here and r.shots > 0]
    zs = [r for r in runs if r.subsample == "all" and r.zero_shot]
    if not trained:
        return None
    sec = Section("fewshot", "Few-shot classification")
    cells: Dict[Tuple[Row, str, int], List[Run]] = defaultdict(list)
    for r in trained:
        cells[(r.row, r.dataset, r.shots)].append(r)
    zcells: Dict[Tuple[Row, str], List[Run]] = defaultdict(list)
    for r in zs:
        zcells[(r.row, r.dataset)].append(r)
    rows = order_rows([k[0] for k in cells])
    zrows = order_rows([k[0] for k in zcells if k[0][1] in {r[1] for r in rows}])
    shots = sorted({k[2] for k in cells})
    present = {k[1] for k in cells}
    datasets = _datasets_for(present, protocol_datasets)
    ordered = [d for d in protocol_datasets if d in present] + sorted(present - set(protocol_datasets))
    row_runs: Dict[Row, List[Run]] = defaultdict(list)
    row_sets: Dict[Row, Set[str]] = defaultdict(set)
    for (row, d, _), rs in cells.items():
        row_runs[row] += rs
        row_sets[row].add(d)
    for (row, d) in zcells:
        row_sets[row].add(d)
    C = {k: Cell.of(v, metric) for k, v in cells.items()}
    Z = {k: Cell.of(v, metric) for k, v in zcells.items()}
    plot = {"datasets": {}, "shots": shots}
    columns = ["method", "zero-shot"] + [f"{k} shot{'s' if k > 1 else ''}" for k in shots]
    for d in ordered + (["average"] if datasets != ordered or len(ordered) > 1 else []):
        table_rows: List[List[str]] = []
        panel = {"lines": {}, "zeroshot": {}}
        for row in zrows:
            if not _visible(row_sets[row], d, datasets):
                continue
            if d == "average":
                summ = average([(x, Z.get((row, x))) for x in datasets])
                z_text, z_mean, z_std = summ.text(), summ.mean, summ.std
                sec.csv.append(_csv_row("fewshot", row, "average", "zero-shot", summary=summ, shots=0))
            else:
                cell = Z.get((row, d))
                if cell is None:
                    continue
                z_text, z_mean, z_std = cell.text(), cell.mean, cell.std
                sec.csv.append(_csv_row("fewshot", row, d, "zero-shot", cell, shots=0))
                sec.problems += _problems(f"{row_label(row)}, {d}, zero-shot", cell)
            table_rows.append([row_label(row), z_text] + [""] * len(shots))
            if z_mean is not None:
                panel["zeroshot"][row_label(row)] = (z_mean, z_std)
        for row in rows:
            if not _visible(row_sets[row], d, datasets):
                continue
            texts, means, stds = [], [], []
            pub_vals: List[Optional[Published]] = []
            for k in shots:
                if d == "average":
                    summ = average([(x, C.get((row, x, k))) for x in datasets])
                    if 0 < len(summ.missing) < len(datasets):
                        sec.problems.append(f"{row_label(row)}, average at {k} shots: no single-config result on "
                                            f"{', '.join(summ.missing)}")
                    texts.append(summ.text())
                    means.append(summ.mean)
                    stds.append(summ.std)
                    pub = _find_pub(pubs, "fewshot", row, "average", f"{k} shots", _configs(row_runs[row]))
                    sec.csv.append(_csv_row("fewshot", row, "average", f"{k} shots", summary=summ, pub=pub, shots=k))
                else:
                    cell = C.get((row, d, k))
                    texts.append(cell.text() if cell else "missing")
                    means.append(cell.mean if cell else None)
                    stds.append(cell.std if cell else None)
                    pub = _find_pub(pubs, "fewshot", row, d, f"{k} shots", _configs(row_runs[row]))
                    sec.csv.append(_csv_row("fewshot", row, d, f"{k} shots", cell, pub=pub, shots=k))
                    sec.problems += _problems(f"{row_label(row)}, {d}, {k} shots", cell)
                pub_vals.append(pub)
            table_rows.append([row_label(row), ""] + texts)
            if any(p is not None for p in pub_vals):
                src = next(p for p in pub_vals if p is not None)
                table_rows.append([f"↳ published ({src.table})", ""] + [_fmt(p.value) if p else "" for p in pub_vals])
                table_rows.append(["↳ Δ ours − published", ""] + [_delta(m, p.value if p else None)
                                                                 for m, p in zip(means, pub_vals)])
            panel["lines"][row_label(row)] = (shots, means, stds)
        title = (f"Average over {len(datasets)} datasets ({', '.join(datasets)})" if d == "average" else d)
        sec.tables.append(Table(title, columns, table_rows))
        plot["datasets"][title if d != "average" else "average"] = panel
    sec.plot_data = plot
    sec.notes.append("mean ± std over seeds (population std, as parse_test_res.py); an average needs every dataset.")
    compare(sec, pubs, _row_configs(trained))
    return sec


# ------------------------------------------------------------------------------------------------ base-to-new
def base2new_section(runs: Sequence[Run], protocol_datasets: Sequence[str], pubs: Sequence[Published],
                     metric: str = "accuracy") -> Optional[Section]:
    """Base-to-new tables (Base / New / H per dataset and averaged), one set per shot count; None without runs."""
    base_all = [r for r in runs if r.subsample == "base" and (r.trained_here or r.zero_shot)]
    new_all = [r for r in runs if r.subsample == "new" and (r.model_dir or r.zero_shot)]
    if not base_all and not new_all:
        return None
    sec = Section("base2new", "Base-to-new generalisation")
    shot_groups = sorted({r.shots for r in base_all + new_all if not r.zero_shot}) or [0]
    for k in shot_groups:  # the protocol has one (16); zero-shot rows appear in each group
        base = [r for r in base_all if r.zero_shot or r.shots == k]
        new = [r for r in new_all if r.zero_shot or r.shots == k]
        prefix = f"{k} shots: " if len(shot_groups) > 1 else ""
        _base2new_tables(sec, base, new, protocol_datasets, pubs, metric, prefix, k)
    sec.notes.append("Base and New: mean ± std over seeds; H = 2·B·N/(B+N) from the seed means (the average row: "
                     "from the averaged B and N).")
    compare(sec, pubs, _row_configs(base_all + new_all))
    return sec


def _base2new_tables(sec: Section, base: Sequence[Run], new: Sequence[Run], protocol_datasets: Sequence[str],
                     pubs: Sequence[Published], metric: str, prefix: str, shots: int) -> None:
    def row_csv(*args, **kwargs) -> Dict:
        return _csv_row("base2new", *args, shots=shots, **kwargs)

    B: Dict[Tuple[Row, str], List[Run]] = defaultdict(list)
    N: Dict[Tuple[Row, str], List[Run]] = defaultdict(list)
    for r in base:
        B[(r.row, r.dataset)].append(r)
    for r in new:
        N[(r.row, r.dataset)].append(r)
    rows = order_rows([k[0] for k in list(B) + list(N)])
    present = {k[1] for k in list(B) + list(N)}
    datasets = _datasets_for(present, protocol_datasets)
    ordered = [d for d in protocol_datasets if d in present] + sorted(present - set(protocol_datasets))
    CB = {k: Cell.of(v, metric) for k, v in B.items()}
    CN = {k: Cell.of(v, metric) for k, v in N.items()}
    row_sets: Dict[Row, Set[str]] = defaultdict(set)
    for (row, d) in list(B) + list(N):
        row_sets[row].add(d)
    columns = ["method", "Base", "New", "H", "seeds (B/N)", "published B / N / H", "Δ H"]
    plot: Dict = {}
    for d in ordered + (["average"] if datasets != ordered or len(ordered) > 1 else []):
        table_rows = []
        bars = {}
        for row in rows:
            if not _visible(row_sets[row], d, datasets):
                continue
            configs = _configs(B.get((row, d), []) + N.get((row, d), [])) if d != "average" else \
                _configs([r for (rw, _), rs in list(B.items()) + list(N.items()) if rw == row for r in rs])
            if d == "average":
                sb = average([(x, CB.get((row, x))) for x in datasets])
                sn = average([(x, CN.get((row, x))) for x in datasets])
                for side, summ in (("base", sb), ("new", sn)):
                    if 0 < len(summ.missing) < len(datasets):
                        sec.problems.append(f"{row_label(row)}, {prefix}average {side}: no single-config result on "
                                            f"{', '.join(summ.missing)}")
                b_text, n_text, b, n = sb.text(), sn.text(), sb.mean, sn.mean
                seeds = ""
                sec.csv.append(row_csv(row, "average", "base", summary=sb,
                                        pub=_find_pub(pubs, "base2new", row, "average", "base", configs)))
                sec.csv.append(row_csv(row, "average", "new", summary=sn,
                                        pub=_find_pub(pubs, "base2new", row, "average", "new", configs)))
            else:
                cb, cn = CB.get((row, d)), CN.get((row, d))
                b_text = cb.text() if cb else "missing"
                n_text = cn.text() if cn else "missing"
                b, n = (cb.mean if cb else None), (cn.mean if cn else None)
                seeds = f"{cb.n if cb else 0}/{cn.n if cn else 0}"
                sec.csv.append(row_csv(row, d, "base", cb,
                                        pub=_find_pub(pubs, "base2new", row, d, "base", configs)))
                sec.csv.append(row_csv(row, d, "new", cn,
                                        pub=_find_pub(pubs, "base2new", row, d, "new", configs)))
                sec.problems += _problems(f"{row_label(row)}, {d}, base", cb)
                sec.problems += _problems(f"{row_label(row)}, {d}, new", cn)
            h = harmonic(b, n)
            ph = _find_pub(pubs, "base2new", row, d, "H", configs)
            pb = _find_pub(pubs, "base2new", row, d, "base", configs)
            pn = _find_pub(pubs, "base2new", row, d, "new", configs)
            sec.csv.append(row_csv(row, d, "H", summary=Summary(h, note="missing"), pub=ph))
            pub_text = " / ".join(_fmt(p.value) if p else "–" for p in (pb, pn, ph)) if (pb or pn or ph) else ""
            table_rows.append([row_label(row), b_text, n_text, _fmt(h) if h is not None else "missing", seeds,
                               pub_text + (f" ({ph.table})" if ph else ""), _delta(h, ph.value if ph else None)])
            bars[row_label(row)] = (b, n, h)
        if table_rows:
            title = f"Average over {len(datasets)} datasets ({', '.join(datasets)})" if d == "average" else d
            sec.tables.append(Table(prefix + title, columns, table_rows))
            plot[prefix + (title if d != "average" else "Average")] = bars
    sec.plot_data.update(plot)


# ------------------------------------------------------------------------------------------------ transfer
def transfer_section(protocol: str, title: str, runs: Sequence[Run], targets: Sequence[str],
                     pubs: Sequence[Published], others: bool = False, exclude: Sequence[str] = (),
                     metric: str = "accuracy") -> Optional[Section]:
    """Evaluations of prompts learned on another dataset, on ``targets`` (and, with ``others``, on any dataset
    not in ``exclude``), grouped by source dataset and shots."""
    evals = [r for r in runs if r.subsample == "all" and r.model_dir and r.source is not None
             and r.source.dataset != r.dataset
             and (r.dataset in targets or (others and r.dataset not in exclude))]
    zs = [r for r in runs if r.subsample == "all" and r.zero_shot]
    if not evals:
        return None
    sec = Section(protocol, title)
    groups: Dict[Tuple[str, int], Dict[Tuple[Row, str], List[Run]]] = defaultdict(lambda: defaultdict(list))
    sources: Dict[Tuple[str, int], Dict[Row, Dict[str, Run]]] = defaultdict(lambda: defaultdict(dict))
    for r in evals:
        key = (r.source.dataset, r.source.shots)
        groups[key][(r.row, r.dataset)].append(r)
        sources[key][r.row][r.source.run_dir] = r.source
    for (src, shots), cells in sorted(groups.items()):
        present = {d for _, d in cells}
        cols = (list(targets) if present & set(targets) else []) + sorted(present - set(targets))
        rows = order_rows([k[0] for k in cells])
        backbones = {r[1] for r in rows}
        zrows = order_rows([r.row for r in zs if r.row[1] in backbones and (r.dataset in cols or r.dataset == src)])
        table_rows = []
        for row in zrows:
            zc = {d: Cell.of([r for r in zs if r.row == row and r.dataset == d], metric) for d in [src] + cols}
            avg = average([(d, zc[d] if zc[d].values else None) for d in cols])
            table_rows.append([row_label(row), zc[src].text()] + [zc[d].text() for d in cols] + [avg.text()])
            for d in [src] + cols:
                sec.csv.append(_csv_row(protocol, row, d, "zero-shot", zc[d]))
        for row in rows:
            sc = Cell.of(list(sources[(src, shots)][row].values()), metric)
            tc = {d: Cell.of(cells[(row, d)], metric) if (row, d) in cells else None for d in cols}
            avg = average([(d, tc[d]) for d in cols])
            sec.csv.append(_csv_row(protocol, row, src, "source", sc, shots=shots))
            for d in cols:
                sec.csv.append(_csv_row(protocol, row, d, "target", tc[d],
                                        pub=_find_pub(pubs, protocol, row, d, "accuracy", _configs(cells.get((row, d), [])))))
                sec.problems += _problems(f"{row_label(row)}, {d}", tc[d])
            sec.csv.append(_csv_row(protocol, row, "average", "target average", summary=avg,
                                    pub=_find_pub(pubs, protocol, row, "average", "accuracy", set())))
            table_rows.append([row_label(row), sc.text()] + [tc[d].text() if tc[d] else "missing" for d in cols]
                              + [avg.text()])
        sec.tables.append(Table(f"Source {src} ({shots} shots) → targets", ["method", f"{src} (source)"] + cols
                                + [f"average ({len(cols)} targets)"], table_rows))
    compare(sec, pubs, _row_configs(evals))
    return sec


# ------------------------------------------------------------------------------------------------ zero-shot
def zeroshot_section(runs: Sequence[Run], protocol_datasets: Sequence[str], metric: str = "accuracy") -> \
        Optional[Section]:
    """Zero-shot accuracy per dataset; None without zero-shot runs."""
    zs = [r for r in runs if r.subsample == "all" and r.zero_shot]
    if not zs:
        return None
    sec = Section("zeroshot", "Zero-shot CLIP")
    present = {r.dataset for r in zs}
    cols = [d for d in protocol_datasets if d in present] + sorted(present - set(protocol_datasets))
    rows = order_rows([r.row for r in zs])
    table_rows = []
    for row in rows:
        cells = {d: Cell.of([r for r in zs if r.row == row and r.dataset == d], metric) for d in cols}
        for d in cols:
            sec.csv.append(_csv_row("zeroshot", row, d, "zero-shot", cells[d]))
        table_rows.append([row_label(row)] + [cells[d].text() for d in cols])
    sec.tables.append(Table("Accuracy", ["method"] + cols, table_rows))
    return sec
