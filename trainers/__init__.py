"""The trainers, one file per method. Importing this package registers every trainer in it
(so ``train.py`` never misses one); drop a new ``<method>.py`` here and it is picked up."""
import importlib
import pkgutil

from promptot.engine import TRAINER_REGISTRY

_before = set(TRAINER_REGISTRY.registered_names())
for _m in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_m}")
__all__ = sorted(set(TRAINER_REGISTRY.registered_names()) - _before)
