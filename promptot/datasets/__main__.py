"""CLI: ``python -m promptot.datasets {check,download,list}`` (also installed as ``promptot-datasets``).

Dataset names may be given as class names (``DescribableTextures``), config-file
stems (``dtd``) or folder names, in any case. Exit codes: 0 all well, 1 problems
found (or manual steps left), 2 bad names or options.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import List, Optional

from promptot.errors import UserError, format_user_error


def _error(exc: BaseException) -> None:
    print(format_user_error(exc), file=sys.stderr)


def _download(args: argparse.Namespace) -> int:
    from .download import BUILTIN_SOURCE, download, select_source
    from .names import resolve_names

    try:
        names = resolve_names(args.names)
        table = select_source(args.source)
    except UserError as exc:
        _error(exc)
        return 2
    status = {}
    for name in names:
        if name not in table:
            _error(UserError(f"{name}: the source file {args.source} has no entry for it; add one, or fetch it "
                             f"with --source {BUILTIN_SOURCE} (the default)."))
            status[name] = "no entry in the source file"
            continue
        try:
            rc = download(name, args.root, sources=table, mirror=args.mirror, keep_archives=not args.delete_archives)
            status[name] = "done" if rc == 0 else "manual steps left (see MANUAL above)"
        except UserError as exc:
            _error(exc)
            status[name] = "failed (see ERROR above)"
    if len(names) > 1:
        print("Summary: " + "; ".join(f"{n}: {s}" for n, s in status.items()))
    return 0 if all(s == "done" for s in status.values()) else 1


def _list() -> int:
    from promptot.engine import DATASET_REGISTRY

    from .builtin import BUILTIN_CLASSES
    from .download import SOURCES
    from .names import stem_of

    print(f"{'NAME':20s} {'config stem':20s} {'folder under DATA':30s} download")
    for name, cls in BUILTIN_CLASSES.items():
        folder = cls.dataset_dir or "DATASET.FOLDER"
        print(f"{name:20s} {stem_of(name) or '-':20s} {folder:30s} {SOURCES[name].kind}")
    others = sorted(set(DATASET_REGISTRY.registered_names()) - set(BUILTIN_CLASSES))
    for name in others:
        print(f"{name:20s} {'-':20s} {'(user module)':30s} -")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptot.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("check", help="check dataset folders, split files, counts and image readability")
    p.add_argument("names", nargs="*", help="dataset names (default: all built-in datasets)")
    p.add_argument("--root", required=True, help="DATASET.ROOT")
    p.add_argument("--sample", type=int, default=None, help="verify only N images per split (seeded)")
    p.add_argument("--no-verify", action="store_true", help="do not open images")
    p.add_argument("--folder", default="", help="DATASET.FOLDER for ImageFolder")

    p = sub.add_parser("download", help="fetch datasets (or print the manual steps for those that cannot be)")
    p.add_argument("names", nargs="+", help="dataset names: class names, config stems (dtd, eurosat, ...), any case")
    p.add_argument("--root", required=True)
    p.add_argument("--source", default="official",
                   help="'official' (default: the datasets' hosts and pinned copies of CoOp's split files) or a JSON "
                        "file of checksummed URLs for another server")
    p.add_argument("--mirror", default=None, help="fetch every file of the recipe as MIRROR/<filename> instead "
                                                  "(checked against the recipe's checksums)")
    p.add_argument("--delete-archives", action="store_true", help="delete archives after extraction")

    sub.add_parser("list", help="list the datasets: names, config stems, folders, how they are downloaded")

    args = parser.parse_args(argv)
    if args.cmd == "check":
        from .doctor import run_check
        from .names import UnknownDatasetError

        try:
            return run_check(args.root, args.names, sample=args.sample, verify=not args.no_verify,
                             folder=args.folder)
        except UnknownDatasetError as exc:
            _error(exc)
            return 2
    if args.cmd == "download":
        args.root = osp.expanduser(args.root)
        return _download(args)
    return _list()


def cli() -> None:
    """Console-script entry point (``promptot-datasets``): user errors become one ``ERROR:`` paragraph, exit 2."""
    from promptot.cli import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
