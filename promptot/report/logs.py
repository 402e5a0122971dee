"""Read a run's ``log.txt`` as the CoOp family writes it (promptot, CoOp, CoCoOp, MaPLe, PLOT, ALIGN, DPT: all print
the same blocks through Dassl).

Result lines follow ``parse_test_res.py``: after the end signal, every ``* <metric>: <number>%`` line counts and the
last one wins. Training logs end with ``Finish training`` (Dassl >= 0.6.1) or ``Finished training`` (older Dassl,
which MaPLe's copy of the parser waits for) and print accuracies with one decimal (``* accuracy: 72.9%``) or,
in older Dassl, two (``72.90%``); evaluation-only logs have no training and start counting at ``=> result``.
The ``** Arguments **`` and ``** Config **`` blocks give the run's method, dataset, shots, seed and the rest of its
config; training lines (``epoch [e/E] batch [b/B] ... name value (avg)``) give per-epoch diagnostics such as the
OT trainers' ``plan_ent``.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

TRAIN_END_SIGNALS = ("Finish training", "Finished training")
TEST_SIGNAL = "=> result"
_METRIC = re.compile(r"\* (\w+): ([\.\deE+-]+)%")
_TRAIN_LINE = re.compile(r"epoch \[(\d+)/(\d+)\] batch \[(\d+)/(\d+)\]")
_PAIR = re.compile(r"(\w+) ([-+\d.eE]+) \(([-+\d.eE]+)\)")
#: keys of ``parse_test_res``-style metrics as promptot's records name them
METRIC_NAMES = {"accuracy": "accuracy", "error": "error_rate", "macro_f1": "macro_f1"}


@dataclass
class LogInfo:
    path: str
    args: Dict[str, str] = field(default_factory=dict)
    config: Dict[str, str] = field(default_factory=dict)  #: flat ``A.B.C -> raw value`` from the config block
    metrics: Dict[str, float] = field(default_factory=dict)
    trained: bool = False  #: the log has training lines
    finished: bool = False  #: a result after the end signal was found
    diagnostics: Dict[str, Dict[int, float]] = field(default_factory=dict)  #: name -> epoch -> epoch average

    def cfg(self, key: str, default: Optional[str] = None) -> Optional[str]:
        v = self.config.get(key)
        return default if v in (None, "", "None") else v


def _flatten_block(lines: List[str]) -> Dict[str, str]:
    """The yacs dump printed after ``** Config **`` (2-space indentation) as dotted keys."""
    out: Dict[str, str] = {}
    stack: List[tuple] = []  # (indent, name)
    for line in lines:
        if not line.strip() or ":" not in line:
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, _, value = line.strip().partition(":")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([n for _, n in stack] + [key.strip()])
        value = value.strip()
        if value == "":
            stack.append((indent, key.strip()))
            out.setdefault(path, "")
        else:
            out[path] = value
    return {k: v for k, v in out.items() if v != "" or not any(o.startswith(k + ".") for o in out)}


def parse_log(path: str) -> LogInfo:
    """Everything :class:`LogInfo` holds, from one ``log.txt``."""
    info = LogInfo(path=path)
    with open(path, errors="replace") as f:
        lines = [ln.rstrip("\n") for ln in f]
    # argument and config blocks
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if s == "** Arguments **":
            i += 2  # the line of stars
            while i < len(lines) and not lines[i].startswith("*"):
                k, sep, v = lines[i].partition(": ")
                if sep:
                    info.args[k.strip()] = v.strip()
                elif lines[i].endswith(":"):
                    info.args[lines[i][:-1].strip()] = ""
                i += 1
            continue
        if s == "** Config **":
            i += 2
            start = i
            while i < len(lines) and (lines[i].startswith(" ") or re.match(r"^[A-Z_0-9]+:", lines[i])):
                i += 1
            info.config = _flatten_block(lines[start:i])
            continue
        i += 1
    # results: parse_test_res's rule, with either end signal
    info.trained = any(_TRAIN_LINE.search(ln) for ln in lines)
    signals = TRAIN_END_SIGNALS if info.trained else (TEST_SIGNAL,)
    go = False
    for ln in lines:
        s = ln.strip()
        if s in signals:
            go = True
        m = _METRIC.search(s)
        if m and go and m.group(1) in METRIC_NAMES:
            info.metrics[METRIC_NAMES[m.group(1)]] = float(m.group(2))
    info.finished = "accuracy" in info.metrics
    info.diagnostics = training_diagnostics(lines)
    return info


def training_diagnostics(lines: List[str], names: Optional[List[str]] = None) -> Dict[str, Dict[int, float]]:
    """Per-epoch averages of the values on the training lines (the ``(avg)`` of each epoch's last printed line),
    e.g. ``{"plan_ent": {1: 0.998, 2: 0.991}}``. ``loss``, ``acc`` and ``lr`` are included."""
    out: Dict[str, Dict[int, float]] = {}
    for ln in lines:
        m = _TRAIN_LINE.search(ln)
        if not m:
            continue
        epoch = int(m.group(1))
        for name, _value, avg in _PAIR.findall(ln[m.end():]):
            if name in ("time", "data") or (names and name not in names):
                continue
            try:
                out.setdefault(name, {})[epoch] = float(avg)
            except ValueError:
                continue
    return out


def run_logs(run_dir: str) -> List[str]:
    """``log.txt`` and the ``log.txt-<time>`` files a re-run into the folder writes, oldest first."""
    files = [os.path.join(run_dir, "log.txt")] if os.path.isfile(os.path.join(run_dir, "log.txt")) else []
    return files + sorted(glob.glob(os.path.join(run_dir, "log.txt-*")))


def run_diagnostics(run_dir: str) -> Dict[str, Dict[int, float]]:
    """Training diagnostics of a run folder over all its logs (a resumed run continues in ``log.txt-<time>``)."""
    merged: Dict[str, Dict[int, float]] = {}
    for path in run_logs(run_dir):
        with open(path, errors="replace") as f:
            for name, per_epoch in training_diagnostics(f.read().splitlines()).items():
                merged.setdefault(name, {}).update(per_epoch)
    return merged
