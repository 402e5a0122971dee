"""Sweeps over the papers' protocols: the protocol file, its expansion into ``train.py`` jobs, a resumable local
runner (one job per GPU, or CPU workers) and Slurm job arrays.

``python -m promptot.sweep PROTOCOL --trainers ... --datasets ... [--shots ...] [--seeds ...] [--dry-run]``;
see :mod:`promptot.sweep.__main__`. The protocols themselves live in ``configs/protocols.yaml``.
"""
from .jobs import Job, JobStatus
from .protocols import ProtocolError, ProtocolFile, Selection, expand, load_protocols

__all__ = ["Job", "JobStatus", "ProtocolError", "ProtocolFile", "Selection", "expand", "load_protocols"]
