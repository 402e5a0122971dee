"""Published numbers, one data file per paper table (``configs/published/*.yaml``), each number with its source.

A file declares ``table``, ``protocol`` (fewshot | base2new | xd | dg | zeroshot), ``status: confirmed`` (the
loader refuses anything else: an unverified number is never a target), ``source``, and ``entries``; ``backbone``
and ``method`` may be given for the whole file. Few-shot entries give ``shots: {K: accuracy}``; base-to-new
entries ``base``, ``new`` and ``H``; transfer and zero-shot entries ``accuracy``. ``dataset`` is a ``DATASET.NAME``
(e.g. DescribableTextures) or ``average``; an entry with ``config`` only matches runs made with that config file.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import List, Optional

import yaml

from ..errors import UserError

PROTOCOLS = ("fewshot", "base2new", "xd", "dg", "zeroshot")
FILE_KEYS = {"table", "protocol", "status", "source", "backbone", "method", "entries"}
ENTRY_KEYS = {"method", "paper_name", "dataset", "backbone", "config", "shots", "base", "new", "H", "accuracy",
              "source"}


class PublishedError(UserError):
    """A published-numbers file is malformed or holds unconfirmed numbers."""


@dataclass(frozen=True)
class Published:
    """One published number."""

    table: str
    protocol: str
    method: str
    backbone: Optional[str]
    dataset: str  #: DATASET.NAME or "average"
    setting: str  #: "K shots", "base", "new", "H" or "accuracy"
    value: float
    source: str
    paper_name: str = ""
    config: Optional[str] = None
    shots: Optional[int] = None

    def matches(self, method: str, backbone: str, configs: Optional[set] = None) -> bool:
        if self.method != method or (self.backbone and self.backbone != backbone):
            return False
        return self.config is None or (configs is not None and configs == {self.config})


def load_published(folder: str) -> List[Published]:
    """Every number of every ``*.yaml`` in ``folder`` (none when the folder does not exist)."""
    out: List[Published] = []
    for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        with open(path) as f:
            try:
                d = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise PublishedError(f"{path} is not valid YAML: {e}") from e
        extra = set(d) - FILE_KEYS
        if extra:
            raise PublishedError(f"{path}: unknown key(s) {sorted(extra)}; allowed: {sorted(FILE_KEYS)}.")
        if d.get("status") != "confirmed":
            raise PublishedError(f"{path}: status is {d.get('status')!r}. Only numbers confirmed against their "
                                 "source go in a published-numbers file (status: confirmed); leave the others out.")
        if d.get("protocol") not in PROTOCOLS:
            raise PublishedError(f"{path}: protocol must be one of {list(PROTOCOLS)}, got {d.get('protocol')!r}.")
        if not d.get("table") or not d.get("source"):
            raise PublishedError(f"{path}: `table` and `source` are required (every number needs its source).")
        for i, e in enumerate(d.get("entries") or []):
            where = f"{path}, entries[{i}]"
            extra = set(e) - ENTRY_KEYS
            if extra:
                raise PublishedError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(ENTRY_KEYS)}.")
            method = e.get("method") or d.get("method")
            if not method or not e.get("dataset"):
                raise PublishedError(f"{where}: `method` (here or for the file) and `dataset` are required.")
            common = dict(table=str(d["table"]), protocol=d["protocol"], method=str(method),
                          backbone=e.get("backbone") or d.get("backbone"), dataset=str(e["dataset"]),
                          source=str(e.get("source") or d["source"]).strip(), paper_name=str(e.get("paper_name", "")),
                          config=e.get("config"))
            values = []
            if d["protocol"] == "fewshot":
                for k, v in (e.get("shots") or {}).items():
                    values.append((f"{int(k)} shots", v, int(k)))
            elif d["protocol"] == "base2new":
                values = [(m, e[m], None) for m in ("base", "new", "H") if m in e]
            elif "accuracy" in e:
                values = [("accuracy", e["accuracy"], None)]
            if not values:
                raise PublishedError(f"{where}: no number for protocol {d['protocol']} (see promptot/report/"
                                     "published.py for the fields).")
            for setting, v, shots in values:
                try:
                    out.append(Published(setting=setting, value=float(v), shots=shots, **common))
                except (TypeError, ValueError) as err:
                    raise PublishedError(f"{where}: {setting} = {v!r} is not a number.") from err
    return out
