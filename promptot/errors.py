"""Errors caused by the user's input (config, paths, names, missing files).

``train.py`` and the command-line tools print these as one paragraph without a
traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import textwrap


class UserError(Exception):
    """Bad input that the user can fix; the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A config value is invalid or inconsistent (still a ``ValueError`` for callers that catch those)."""


def user_error_types() -> tuple:
    """Every exception class that is a user error, including those of optional sub-packages."""
    types = [UserError]
    try:
        from .clip.loader import BackboneNotFoundError

        types.append(BackboneNotFoundError)
    except ImportError:
        pass
    try:
        from .datasets import common as _c

        for n in ("DatasetNotFoundError", "CorruptImageError", "SplitFileError"):
            if hasattr(_c, n):
                types.append(getattr(_c, n))
    except ImportError:
        pass
    try:
        from .trainer import CheckpointMismatchError

        types.append(CheckpointMismatchError)
    except ImportError:
        pass
    return tuple(types)


def format_user_error(e: BaseException) -> str:
    return "ERROR: " + "\n".join(textwrap.wrap(str(e), width=110, subsequent_indent="  ", break_long_words=False,
                                               break_on_hyphens=False)) 
