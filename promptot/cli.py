"""The one rule every command-line entry point follows: a :class:`~promptot.errors.UserError` is printed as
one ``ERROR:`` paragraph on stderr with exit status 2; any other exception is a bug and keeps its traceback."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Optional

from .errors import UserError, format_user_error

__all__ = ["run_main"]


def run_main(main: Callable[[], Optional[int]]) -> NoReturn:
    """Call ``main()`` and exit with its return code (``None`` = 0), or with 2 after printing a user error."""
    try:
        code = main()
    except UserError as e:
        print(format_user_error(e), file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
