"""Runs to report: the last test record of every ``results.jsonl`` under a folder, and the ``log.txt`` of runs
made with the original repositories (or with any CoOp-family code) that have no results records.

Every run carries a group hash: the config without seed and output folders. Runs of one table cell with
different group hashes are different experiments and are never averaged together.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..config import RUNTIME_KEYS, config_from_yaml, group_hash
from .logs import parse_log, run_logs

SKIP_DIRS = (".sweep",)  #: runner state
_SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass
class Run:
    """One finished evaluation (a run folder's last test result)."""

    run_dir: str
    method: str
    dataset: str
    backbone: str
    shots: int
    subsample: str
    seed: Optional[int]
    epoch: int
    metrics: Dict[str, float]
    group: str  #: group hash ("?" when unknown)
    origin: str = ""  #: "" for results records; a label (e.g. "log") for ingested logs
    model_dir: Optional[str] = None
    time: str = ""
    config_file: Optional[str] = None  #: stem of --config-file when the log says it
    source: Optional["Run"] = field(default=None, repr=False)  #: the run whose prompts an evaluation loaded
    variant: str = ""  #: the config stem, when one method was run as several variants (see :func:`assign_variants`)

    @property
    def zero_shot(self) -> bool:
        return self.epoch == 0 and not self.model_dir

    @property
    def trained_here(self) -> bool:
        return self.epoch > 0 and not self.model_dir

    @property
    def row(self) -> Tuple[str, str, str]:
        """Table row identity: method, backbone, and the origin and variant tags (joined by ", ")."""
        return self.method, self.backbone, ", ".join(x for x in (self.origin, self.variant) if x)

    @property
    def identity(self) -> str:
        """What must agree across seeds of one cell: the group hash, and the source's for evaluations."""
        return self.group + (f"<{self.source.group}" if self.source is not None else "")


def _int(v, default=None):
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return default


def _from_record(rec: dict, run_dir: str) -> Run:
    group = rec.get("group_hash")
    if not group:
        cfg_path = os.path.join(run_dir, "config.yaml")
        if os.path.isfile(cfg_path):
            try:
                group = group_hash(config_from_yaml(cfg_path))
            except Exception:  # noqa: BLE001 - an unreadable config.yaml leaves the group unknown
                group = None
    seed = _int(rec.get("seed"))
    return Run(run_dir=run_dir, method=str(rec.get("method")), dataset=str(rec.get("dataset")),
               backbone=str(rec.get("backbone") or "?"), shots=max(0, _int(rec.get("num_shots"), 0)),
               subsample=str(rec.get("subsample_classes") or "all"), seed=seed if seed is not None and seed >= 0
               else None, epoch=_int(rec.get("epoch"), 0), metrics={k: float(v) for k, v in rec["metrics"].items()},
               group=group or "?", model_dir=rec.get("model_dir"), time=str(rec.get("time", "")))


def _log_group(config: Dict[str, str]) -> str:
    ignore = set(RUNTIME_KEYS) | {"SEED"}
    items = sorted((k, v) for k, v in config.items()
                   if k not in ignore and not (k.startswith("TRAINER.") and k.count(".") >= 2
                                               and k.split(".")[1] != _own_node(config)))
    return "log:" + hashlib.sha256(json.dumps(items).encode()).hexdigest()[:10]


def _own_node(config: Dict[str, str]) -> str:
    from ..config import TRAINER_NODE_ALIASES

    name = str(config.get("TRAINER.NAME", "")).upper()
    return TRAINER_NODE_ALIASES.get(name, name)


def run_from_log(path: str, origin: str = "log") -> Optional[Run]:
    """A :class:`Run` from a ``log.txt`` (None when it holds no finished result or does not say what it ran)."""
    info = parse_log(path)
    if not info.finished:
        return None
    method = info.cfg("TRAINER.NAME") or info.args.get("trainer")
    dataset = info.cfg("DATASET.NAME")
    if not method or not dataset:
        return None
    run_dir = os.path.dirname(path)
    seed = _int(info.cfg("SEED"))
    if seed is None or seed < 0:
        seed = _int(info.args.get("seed"))
    if seed is None or seed < 0:
        m = _SEED_DIR.match(os.path.basename(run_dir))
        seed = int(m.group(1)) if m else None
    model_dir = info.args.get("model_dir") or None
    eval_only = info.args.get("eval_only") == "True" or not info.trained
    if eval_only:
        epoch = _int(info.args.get("load_epoch"), 0) if model_dir else 0
    else:
        epoch = _int(info.cfg("OPTIM.MAX_EPOCH"), 1) or 1
    cfg_file = info.args.get("config_file")
    return Run(run_dir=run_dir, method=method, dataset=dataset, backbone=info.cfg("MODEL.BACKBONE.NAME", "?") or "?",
               shots=max(0, _int(info.cfg("DATASET.NUM_SHOTS"), 0) or 0),
               subsample=info.cfg("DATASET.SUBSAMPLE_CLASSES", "all") or "all", seed=seed, epoch=epoch,
               metrics=dict(info.metrics), group=_log_group(info.config), origin=origin, model_dir=model_dir,
               time=str(os.path.getmtime(path)),
               config_file=os.path.splitext(os.path.basename(cfg_file))[0] if cfg_file else None)


def _last_test_record(path: str) -> Optional[dict]:
    last = None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON ({e}); delete the broken line") from e
            if rec.get("split") == "test":
                last = rec
    return last


def _config_stem_from_log(run_dir: str) -> Optional[str]:
    for path in run_logs(run_dir)[:1]:
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("config_file: "):
                    return os.path.splitext(os.path.basename(line.split(": ", 1)[1].strip()))[0] or None
                if line.startswith("** Config **"):
                    break
    return None


def load_runs(root: str, logs: Sequence[Tuple[str, str]] = (), ingest_logs: bool = True) -> List[Run]:
    """Runs under ``root`` (results records; folders with only a ``log.txt`` are ingested as origin "log" when
    ``ingest_logs``), plus the logs under each ``(folder, label)`` of ``logs``. Folders the sweep runner moved
    aside (``*.changed-*``) and its state folder are skipped. Evaluations are linked to the run they loaded."""
    runs: List[Run] = []
    for base, label in [(root, None)] + list(logs):
        for dirpath, dirnames, files in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and ".changed-" not in d)
            if label is None and "results.jsonl" in files:
                rec = _last_test_record(os.path.join(dirpath, "results.jsonl"))
                if rec is not None:
                    run = _from_record(rec, dirpath)
                    run.config_file = _config_stem_from_log(dirpath)
                    runs.append(run)
                continue
            if "log.txt" in files and (label is not None or ingest_logs):
                run = run_from_log(os.path.join(dirpath, "log.txt"), origin=label or "log")
                if run is not None:
                    runs.append(run)
    link_sources(runs, [root] + [b for b, _ in logs])
    assign_variants(runs)
    return runs


def assign_variants(runs: Sequence[Run]) -> None:
    """A method run with several config files for the same cell (e.g. IVLP 2+2 and IVLP language-only, both trainer
    IVLP) is several methods: its runs get their config stem as ``variant`` (a row each). Config files that only
    change with the cell (CoOp's per-shot configs) do not split a method."""
    cells: Dict[tuple, set] = {}
    for r in runs:
        key = (r.method, r.backbone, r.origin, r.dataset, r.shots, r.subsample, bool(r.model_dir),
               r.source.dataset if r.source is not None else None)
        cells.setdefault(key, set()).add(r.config_file)
    split = {k[:3] for k, stems in cells.items() if len(stems - {None}) > 1}
    for r in runs:
        if (r.method, r.backbone, r.origin) in split and r.config_file:
            r.variant = r.config_file


def link_sources(runs: Iterable[Run], bases: Sequence[str] = ()) -> None:
    """Point each evaluation (``model_dir`` set) at the run it loaded, found by folder."""
    runs = list(runs)
    index = {os.path.realpath(r.run_dir): r for r in runs}
    for r in runs:
        if not r.model_dir:
            continue
        candidates = [r.model_dir] if os.path.isabs(r.model_dir) else \
            [r.model_dir] + [os.path.join(os.path.dirname(os.path.abspath(b)), r.model_dir) for b in bases] + \
            [os.path.join(b, r.model_dir) for b in bases]
        for c in candidates:
            src = index.get(os.path.realpath(c))
            if src is not None:
                r.source = src
                break
        else:  # logs moved from where they ran: match the longest unique tail of the path (>= 3 folders)
            parts = [p for p in os.path.normpath(r.model_dir).split(os.sep) if p]
            for k in range(len(parts), 2, -1):
                tail = os.sep + os.sep.join(parts[-k:])
                hits = [x for path, x in index.items() if path.endswith(tail)]
                if len(hits) == 1:
                    r.source = hits[0]
                    break
