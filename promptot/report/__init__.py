"""Tables, comparisons with published numbers and figures from a folder of runs.

``python -m promptot.report RUNS_DIR [--protocol P ...] [--logs DIR[=LABEL] ...] [--out DIR]`` (see
:mod:`promptot.report.__main__`); :func:`build_report` and :func:`write_report` do the same from Python.
"""
from .build import Report, build_report, write_report

__all__ = ["Report", "build_report", "write_report"]
