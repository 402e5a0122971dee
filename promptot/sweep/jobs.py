"""One ``train.py`` run of a sweep, and what its output folder says about it.

A job is done when its ``results.jsonl`` holds a test record of the expected evaluation (the epoch the training
ends at, or the epoch an evaluation loads) with the job's config hash. A folder whose record or ``config.yaml``
carries another hash belongs to a different config: the runner refuses to mix the two unless told to.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional


@dataclass
class Job:
    """A ``train.py`` invocation with the facts the runner and the report need about it."""

    id: str  #: the output folder relative to the output root (unique within a sweep)
    protocol: str
    method: str
    trainer: str
    role: str  #: "train" (trains, then tests) or "eval" (``--eval-only``)
    dataset: str  #: dataset config stem, e.g. "dtd"
    config: str  #: config file, relative to the repository root
    output_dir: str
    data_root: str
    opts: List[str] = field(default_factory=list)
    shots: Optional[int] = None
    seed: Optional[int] = None
    subsample: str = "all"
    stage: str = ""
    model_dir: Optional[str] = None
    load_epoch: Optional[int] = None
    max_epoch: Optional[int] = None  #: the epoch training ends at (train jobs)
    needs: List[str] = field(default_factory=list)  #: ids of the jobs that must be done first

    @property
    def eval_only(self) -> bool:
        return self.role == "eval"

    @property
    def expected_epoch(self) -> int:
        """The ``epoch`` field of the test record that completes the job (0 for zero-shot evaluation)."""
        if self.role == "train":
            return int(self.max_epoch or 0)
        return int(self.load_epoch or 0)

    def argv(self) -> List[str]:
        """Arguments of ``train.py`` in the reference scripts' order."""
        a = ["--root", self.data_root]
        if self.seed is not None:
            a += ["--seed", str(self.seed)]
        a += ["--trainer", self.trainer, "--dataset-config-file", f"configs/datasets/{self.dataset}.yaml",
              "--config-file", self.config, "--output-dir", self.output_dir]
        if self.model_dir:
            a += ["--model-dir", self.model_dir]
        if self.load_epoch is not None and self.model_dir:
            a += ["--load-epoch", str(self.load_epoch)]
        if self.eval_only:
            a.append("--eval-only")
        return a + list(self.opts)

    def command(self, python: str = "python") -> str:
        """The shell command, as ``--dry-run`` prints it (run from the repository root)."""
        return " ".join(shlex.quote(x) for x in [python, "train.py"] + self.argv())

    def label(self) -> str:
        """Short human name, e.g. "CoOp dtd 16-shot base seed1 train"."""
        parts = [self.method, self.dataset]
        if self.shots:
            parts.append(f"{self.shots}-shot")
        if self.subsample != "all":
            parts.append(self.subsample)
        if self.seed is not None:
            parts.append(f"seed{self.seed}")
        parts.append(self.stage or self.role)
        return " ".join(parts)

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "Job":
        return cls(**d)


class JobStatus:
    """What a job's output folder holds."""

    DONE = "done"  #: a complete results record with the job's hash
    CHANGED = "changed"  #: results or config.yaml of another config: refuse to mix
    PARTIAL = "partial"  #: started with this config (checkpoints or config.yaml), not finished: resumes
    PENDING = "pending"  #: nothing there yet


def read_records(run_dir: str) -> List[dict]:
    """The JSON records of ``run_dir/results.jsonl`` (broken lines skipped; the runner only needs good ones)."""
    path = os.path.join(run_dir, "results.jsonl")
    out = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return out


def completing_record(job: Job, records: List[dict], job_hash: Optional[str],
                      not_before: Optional[str] = None) -> Optional[dict]:
    """The last test record that completes ``job`` (right epoch and model folder, hash when known, and for an
    evaluation not older than the training it loads, ``not_before``)."""
    for r in reversed(records):
        if r.get("split") != "test" or int(r.get("epoch") or 0) != job.expected_epoch:
            continue
        if not_before and str(r.get("time", "")) < not_before:
            continue
        if job_hash is not None and r.get("config_hash") != job_hash:
            continue
        if job.model_dir and os.path.normpath(str(r.get("model_dir") or "")) != os.path.normpath(job.model_dir):
            # the record may hold the absolute form of a relative model folder
            if os.path.abspath(str(r.get("model_dir") or "")) != os.path.abspath(job.model_dir):
                continue
        return r
    return None


def folder_hash(run_dir: str) -> Optional[str]:
    """The config hash of what is in ``run_dir``: its last results record's, else its ``config.yaml``'s."""
    recs = [r for r in read_records(run_dir) if r.get("config_hash")]
    if recs:
        return recs[-1]["config_hash"]
    path = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(path):
        from ..config import config_from_yaml, config_hash

        try:
            return config_hash(config_from_yaml(path))
        except Exception:  # noqa: BLE001 - an unreadable config.yaml says nothing about the config
            return None
    return None


def loaded_run_time(job: Job) -> Optional[str]:
    """For an evaluation: the time of the last test record of the run it loads (its results must be newer: an
    evaluation of prompts that were trained again is stale)."""
    if not job.model_dir:
        return None
    times = [str(r.get("time", "")) for r in read_records(job.model_dir) if r.get("split") == "test"]
    return max(times) if times else None


def job_status(job: Job, job_hash: Optional[str]) -> str:
    """One of :class:`JobStatus` for ``job`` whose resolved config hashes to ``job_hash``."""
    d = job.output_dir
    if not os.path.isdir(d):
        return JobStatus.PENDING
    records = read_records(d)
    if completing_record(job, records, job_hash, loaded_run_time(job)) is not None:
        return JobStatus.DONE
    found = folder_hash(d)
    if found is not None and job_hash is not None and found != job_hash:
        return JobStatus.CHANGED
    if records or os.path.isfile(os.path.join(d, "config.yaml")):
        return JobStatus.PARTIAL
    return JobStatus.PENDING


def dir_complete(run_dir: str) -> bool:
    """A folder holds a finished run: a test record written after training (epoch > 0)."""
    return any(r.get("split") == "test" and int(r.get("epoch") or 0) > 0 for r in read_records(run_dir))


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m promptot.sweep.jobs DIR``: exit 0 when DIR holds a finished run (for shell scripts)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m promptot.sweep.jobs RUN_DIR  (exit 0 when the run finished)", file=sys.stderr)
        return 2
    return 0 if dir_complete(args[0]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
