"""Errors caused by the user's input (config, paths, names, missing files).

Every user-facing exception subclasses :class:`UserError` where it is defined (it may also subclass the
builtin it refines, e.g. ``FileNotFoundError``). ``train.py`` and the command-line tools print a
``UserError`` as one paragraph without a traceback and exit 2; anything else is a bug and keeps its
traceback. This module imports nothing from the project, so any module can raise these.
"""
from __future__ import annotations

import textwrap

__all__ = ["UserError", "ConfigError", "format_user_error"]


class UserError(Exception):
    """Bad input that the user can fix; the message says what is wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A config value is invalid or inconsistent (still a ``ValueError`` for callers that catch those)."""


def format_user_error(e: BaseException) -> str:
    """``ERROR: <message>`` as one paragraph wrapped at 110 columns (line breaks in the message become spaces)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return "ERROR: " + "\n".join(textwrap.wrap(text, width=110, subsequent_indent="  ", break_long_words=False,
                                               break_on_hyphens=False))
