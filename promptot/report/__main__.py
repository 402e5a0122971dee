"""Tables and figures for the papers' protocols: ``python -m promptot.report RUNS_DIR [options]``.

Reads the last test record of every ``results.jsonl`` under RUNS_DIR (and ingests the ``log.txt`` of folders that
have none, e.g. runs made with the original repositories; ``--logs DIR[=LABEL]`` adds other folders of such logs
as separate rows), and writes into ``--out`` (default RUNS_DIR/report): ``report.md``, one CSV per protocol
(``fewshot.csv``, ``base2new.csv``, ``xd.csv``, ``dg.csv``, ``zeroshot.csv``; long format, one row per cell with
seeds, values, flags, published number and difference) and figures (``fewshot``, ``base2new``,
``ot_diagnostics``; PNG and SVG). Published numbers come from ``configs/published/*.yaml`` (confirmed only).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Tuple

from ..errors import UserError, format_user_error
from .build import ALL, build_report, markdown, write_report
from .published import load_published
from .runs import load_runs


def _logs(items: List[str]) -> List[Tuple[str, str]]:
    out = []
    for it in items:
        folder, _, label = it.partition("=")
        if not os.path.isdir(folder):
            raise UserError(f"--logs {it}: {folder} is not a folder. Give a folder holding run folders with log.txt "
                            "files, optionally with =LABEL (the rows' tag, default 'log').")
        out.append((folder, label or "log"))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit code (0 written, 1 no runs, 2 bad input)."""
    p = argparse.ArgumentParser(prog="python -m promptot.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", help="folder holding run folders (searched recursively)")
    p.add_argument("--protocol", action="append", choices=list(ALL),
                   help="only these protocols (repeatable; default: every protocol with runs)")
    p.add_argument("--logs", action="append", default=[], metavar="DIR[=LABEL]",
                   help="also read the log.txt of the runs under DIR (rows tagged LABEL, default 'log')")
    p.add_argument("--no-ingest", action="store_true", help="do not read log.txt of folders without results.jsonl")
    p.add_argument("--datasets", nargs="+", help="DATASET.NAMEs an average runs over (default: the protocol's)")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "macro_f1", "error_rate"])
    p.add_argument("--out", help="output folder (default: RUNS_DIR/report)")
    p.add_argument("--protocol-file", help="default: configs/protocols.yaml of the repository")
    p.add_argument("--published", help="folder of published-number files (default: configs/published/)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    try:
        if not os.path.isdir(args.runs_dir):
            raise UserError(f"{args.runs_dir} is not a folder. Give the output root of your runs (e.g. output/).")
        from ..sweep.protocols import dataset_names, load_protocols, repo_root

        repo = repo_root()
        protocols = load_protocols(args.protocol_file) if (args.protocol_file or os.path.isfile(
            os.path.join(repo, "configs", "protocols.yaml"))) else None
        published = load_published(args.published or os.path.join(repo, "configs", "published"))
        runs = load_runs(args.runs_dir, _logs(args.logs), ingest_logs=not args.no_ingest)
        if not runs:
            print(f"No finished runs (results.jsonl with a test record, or a finished log.txt) under {args.runs_dir}")
            return 1
        rep = build_report(runs, protocols, args.protocol or ALL, published, dataset_names(repo), args.datasets,
                           args.metric)
        out = args.out or os.path.join(args.runs_dir, "report")
        files = write_report(rep, out, plots=not args.no_plots)
        print(markdown(rep))
        print("Wrote " + ", ".join(files))
        return 0
    except UserError as e:
        print(format_user_error(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
