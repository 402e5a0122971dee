"""Name -> class registries with Dassl's semantics and a did-you-mean error."""
from __future__ import annotations

import difflib
from typing import Any, Dict, List, Optional


class Registry:
    """Maps names to classes or functions.

    ``register()`` files an object under its ``__name__``; registering a taken
    name raises ``KeyError`` unless ``force=True`` (as Dassl's registry does).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: Dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(
                f'An object named "{name}" was already registered in "{self._name}" registry'
            )
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False) -> Any:
        if obj is None:

            def wrapper(fn_or_class: Any) -> Any:
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            raise KeyError(unknown_name_message(self._name, name, self.registered_names()))
        return self._obj_map[name]

    def registered_names(self) -> List[str]:
        return list(self._obj_map.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map


def unknown_name_message(kind: str, name: str, avai: List[str], hint: Optional[str] = None) -> str:
    """One-paragraph error text for an unknown registry name."""
    close = difflib.get_close_matches(name, avai, n=3, cutoff=0.5)
    msg = f'"{name}" is not a registered {kind} name.'
    if close:
        msg += f" Did you mean {', '.join(repr(c) for c in close)}?"
    msg += f" Registered names: {', '.join(sorted(avai)) or '(none)'}."
    if hint:
        msg += " " + hint
    return msg


def check_availability(requested: str, available: List[str]) -> None:
    """Raise ``ValueError`` when ``requested`` is not in ``available`` (Dassl's helper)."""
    if requested not in available:
        raise ValueError(unknown_name_message("", requested, available).replace("registered  name", "registered name"))


TRAINER_REGISTRY = Registry("TRAINER")
DATASET_REGISTRY = Registry("DATASET")
EVALUATOR_REGISTRY = Registry("EVALUATOR")

__all__ = ["Registry", "TRAINER_REGISTRY", "DATASET_REGISTRY", "EVALUATOR_REGISTRY", "check_availability"]
