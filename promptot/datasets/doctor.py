"""``python -m promptot.datasets check``: is a dataset where the loaders expect it, complete and readable?

For each dataset it reports the folder (found / missing), missing annotation
or split files, image counts per split against the expected counts (confirmed
counts are checked; unverified ones are printed as "unverified"), images listed
in a split but absent, and images PIL cannot open (``verify()`` on every image,
or on a seeded sample of N per split). Nothing is written.
"""
from __future__ import annotations

import os.path as osp
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .common import DatasetNotFoundError, UnsafeSplitPathError, doctor_command

SHOW = 5  # how many file names to show per problem


@dataclass
class Report:
    name: str
    path: str
    found: bool = False
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.found and not self.problems


def _names(paths: Sequence[str], base: str) -> str:
    shown = [osp.relpath(p, base) if osp.isabs(p) else p for p in paths[:SHOW]]
    more = f" ... (+{len(paths) - SHOW} more)" if len(paths) > SHOW else ""
    return ", ".join(shown) + more


def verify_image(path: str) -> Optional[str]:
    """None when PIL can open and verify ``path``, else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means unreadable
        return f"{type(exc).__name__}: {exc}"


def check_dataset(name: str, root: str, sample: Optional[int] = None, verify: bool = True,
                  folder: str = "") -> Report:
    from .builtin import BUILTIN_CLASSES

    cls = BUILTIN_CLASSES[name]
    obj = cls.__new__(cls)
    if name == "ImageFolder":
        obj._folder = folder
    obj.setup_paths(root)
    rep = Report(name, obj.dataset_dir)
    if not osp.isdir(obj.dataset_dir):
        rep.problems.append(f"folder missing: {obj.dataset_dir}")
        return rep
    rep.found = True

    split_missing = bool(obj.split_path) and not osp.exists(obj.split_path) and name != "ImageFolder"
    # With the split file only the image folders are needed; annotation files only to regenerate it.
    missing = [rel for rel in cls.needed_paths(split_present=not split_missing)
               if not osp.exists(osp.join(obj.dataset_dir, rel))]
    if split_missing:
        rep.problems.append(f"split file missing: {cls.split_file} (a run would generate a new split that is not "
                            f"comparable with published numbers; get the official file: "
                            f"python -m promptot.datasets download {name} --root {root})")
        if missing:
            rep.problems.append(f"cannot regenerate the split either: missing {len(missing)} file(s)/folder(s) "
                                f"under {obj.dataset_dir}: {_names(missing, obj.dataset_dir)}")
    elif missing:
        rep.problems.append(f"missing {len(missing)} file(s)/folder(s) under {obj.dataset_dir}: "
                            f"{_names(missing, obj.dataset_dir)}")
    try:
        splits = obj.raw_splits()
    except DatasetNotFoundError as exc:
        if not rep.problems:
            rep.problems.append(str(exc).splitlines()[0])
        return rep
    except (UnsafeSplitPathError, ValueError, KeyError, OSError) as exc:
        rep.problems.append(f"cannot read the split: {type(exc).__name__}: {exc}")
        return rep

    expected = cls.expected_counts or {}
    classes = set()
    for split, items in splits.items():
        if not items and split not in expected:
            continue
        rep.counts[split] = len(items)
        classes.update(y for _, y, _ in items)
        exp = expected.get(split)
        if exp is not None and len(items) != exp:
            if cls.counts_verified:
                rep.problems.append(f"{split}: {len(items)} images, expected {exp}")
            else:
                rep.notes.append(f"{split}: {len(items)} images (reference {exp}, unverified)")
        absent = [p for p, _, _ in items if not osp.isfile(p)]
        if absent:
            rep.problems.append(f"{split}: {len(absent)} of {len(items)} listed images missing: "
                                f"{_names(absent, obj.dataset_dir)}")
        if verify:
            present = [p for p, _, _ in items if osp.isfile(p)]
            if sample is not None and sample < len(present):
                present = random.Random(0).sample(present, sample)
            bad = [p for p in present if verify_image(p) is not None]
            if bad:
                rep.problems.append(f"{split}: {len(bad)} unreadable image(s) (of {len(present)} checked): "
                                    f"{_names(bad, obj.dataset_dir)}")
    exp_cls = expected.get("classes")
    if exp_cls is not None and len(classes) != exp_cls:
        (rep.problems if cls.counts_verified else rep.notes).append(
            f"{len(classes)} classes, expected {exp_cls}" + ("" if cls.counts_verified else " (unverified)"))
    return rep


def format_report(rep: Report, explicit: bool, expected: Optional[Dict[str, int]], verified: bool) -> str:
    if not rep.found:
        tag = "MISSING" if explicit else "absent"
        return f"[{tag}] {rep.name}: {rep.path}"
    lines = [f"[{'OK' if rep.ok else 'FAIL'}] {rep.name}: {rep.path}"]
    if rep.counts:
        parts = []
        for split, n in rep.counts.items():
            exp = (expected or {}).get(split)
            status = "" if exp is None else (f" (expected {exp})" if verified else f" (reference {exp}, unverified)")
            parts.append(f"{split} {n}{status}")
        lines.append("    " + ", ".join(parts))
    lines += ["    problem: " + p for p in rep.problems]
    lines += ["    note: " + n for n in rep.notes]
    return "\n".join(lines)


def run_check(root: str, names: Sequence[str] = (), sample: Optional[int] = None, verify: bool = True,
              folder: str = "", out: Callable[[str], None] = print) -> int:
    """Check ``names`` (default: all built-in datasets) under ``root``; returns the exit code.

    Named datasets that are missing count as problems; with no names, absent
    datasets are listed but do not fail the check (a user rarely has all 15).
    Names may be class names, config stems or folder names in any case; an
    unknown one raises :class:`~promptot.datasets.names.UnknownDatasetError`
    before anything is checked.
    """
    from .builtin import BUILTIN_CLASSES, BUILTIN_DATASETS
    from .names import resolve_names

    explicit = bool(names)
    names = resolve_names(names) if explicit else list(BUILTIN_DATASETS)
    n_bad = 0
    n_found = 0
    for name in names:
        rep = check_dataset(name, root, sample=sample, verify=verify, folder=folder)
        cls = BUILTIN_CLASSES[name]
        out(format_report(rep, explicit, cls.expected_counts, cls.counts_verified))
        n_found += rep.found
        if (rep.found and rep.problems) or (explicit and not rep.found):
            n_bad += 1
    if n_bad:
        out(f"{n_bad} dataset(s) with problems. Fetch what can be fetched: "
            f"python -m promptot.datasets download NAME --root {root}")
        return 1
    if not n_found:
        out(f"No dataset found under {root}.")
        return 1
    out(f"All checked datasets OK ({doctor_command(None, root)}).")
    return 0
