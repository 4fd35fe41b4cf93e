"""User errors on every command line: one line naming what is wrong, exit code 2, no traceback.

A user error is an exception the code raises about the user's input (a bad value, a missing or foreign
file, an output the command may not write); `USER_ERRORS` lists the types. Anything else is a bug and keeps
its traceback. `--debug` on a command, or SARMAE_DEBUG=1 in the environment, shows the traceback of user
errors too.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from data_pipelines import ownership

DEBUG_ENV = "SARMAE_DEBUG"
EXIT_USER_ERROR = 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                 PermissionError, ownership.OutputError)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True with SARMAE_DEBUG=1 (or any value but '', '0') or `--debug` among `argv`."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    return "--debug" in (sys.argv[1:] if argv is None else argv)


def message(error: BaseException) -> str:
    """The message of `error` as the project wrote it: one line, except the few deliberate listings (an
    incompatible checkpoint's differing arrays, at most a dozen lines)."""
    return str(error).strip() or type(error).__name__


def report(prog: str, error: BaseException) -> int:
    print(f"{prog}: error: {message(error)}", file=sys.stderr)
    return EXIT_USER_ERROR


def run(prog: str, main: Callable[[], Any], *, user_errors: tuple[type[BaseException], ...] = (),
        argv: Sequence[str] | None = None) -> Any:
    """Calls `main()`; a user error (`USER_ERRORS` + `user_errors`) exits with code 2 and one line,
    unless debugging is requested (then it propagates with its traceback)."""
    try:
        return main()
    except USER_ERRORS + tuple(user_errors) as e:
        if debug_requested(argv):
            raise
        sys.exit(report(prog, e))
