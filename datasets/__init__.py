"""CoOp-style import point: ``import datasets`` registers every dataset.

The built-in classes live in :mod:`promptot.datasets`. Any other module placed
in this folder (``datasets/my_data.py`` defining a class decorated with
``@DATASET_REGISTRY.register()`` from ``promptot.engine``) is imported here
too, so it can be selected with ``DATASET.NAME`` without editing train.py.
"""
import importlib
import os
import pkgutil

import promptot.datasets  # noqa: F401  (registers the built-in datasets)

_here = os.path.dirname(os.path.abspath(__file__))
for _info in sorted(pkgutil.iter_modules([_here]), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    try:
        importlib.import_module(f"{__name__}.{_info.name}")
    except Exception as _exc:  # noqa: BLE001 - say which user file broke
        raise ImportError(f"Could not import the dataset module {os.path.join(_here, _info.name)}"
                          f"{'' if _info.ispkg else '.py'}: {type(_exc).__name__}: {_exc}") from _exc
