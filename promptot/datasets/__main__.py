"""CLI: ``python -m promptot.datasets {check,download,list}`` (also installed as ``promptot-datasets``)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptot.datasets", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("check", help="check dataset folders, split files, counts and image readability")
    p.add_argument("names", nargs="*", help="dataset names (default: all built-in datasets)")
    p.add_argument("--root", required=True, help="DATASET.ROOT")
    p.add_argument("--sample", type=int, default=None, help="verify only N images per split (seeded)")
    p.add_argument("--no-verify", action="store_true", help="do not open images")
    p.add_argument("--folder", default="", help="DATASET.FOLDER for ImageFolder")

    p = sub.add_parser("download", help="fetch a dataset from its official sources")
    p.add_argument("names", nargs="+")
    p.add_argument("--root", required=True)
    p.add_argument("--mirror", default=None, help="fetch every file as MIRROR/<filename> instead")
    p.add_argument("--delete-archives", action="store_true", help="delete archives after extraction")

    sub.add_parser("list", help="list the registered datasets and their folders")

    args = parser.parse_args(argv)
    if args.cmd == "check":
        from .doctor import run_check

        return run_check(args.root, args.names, sample=args.sample, verify=not args.no_verify, folder=args.folder)
    if args.cmd == "download":
        from .download import ChecksumError, DownloadError, download

        rc = 0
        for name in args.names:
            try:
                rc = max(rc, download(name, args.root, mirror=args.mirror, keep_archives=not args.delete_archives))
            except (ChecksumError, DownloadError, KeyError) as exc:
                print(f"ERROR: {exc}", file=sys.stderr)
                rc = 2
        return rc
    from promptot.engine import DATASET_REGISTRY

    from . import BUILTIN_CLASSES

    for name in sorted(DATASET_REGISTRY.registered_names()):
        cls = BUILTIN_CLASSES.get(name)
        print(f"{name:22s} {('DATA/' + cls.dataset_dir) if cls and cls.dataset_dir else '(user module / ImageFolder)'}")
    return 0


def cli() -> None:
    """Console-script entry point (``promptot-datasets``): user errors become one ``ERROR:`` paragraph, exit 2."""
    from promptot.cli import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
