"""``python -m bench [--device cpu|cuda] [--only NAME ...] [--out REPORT.json]``: see :mod:`bench.suite`."""
from bench.suite import main

if __name__ == "__main__":
    raise SystemExit(main())
