"""The absl commands (`sarmae-train`, `sarmae-eval`): user errors as one line and exit code 2, no traceback.

A bad `--config.key=value` (a key the config lacks, a value of the wrong type) fails while absl parses the
flags, inside ml_collections, with a chained traceback; `parse_flags` turns it into one line keeping
ml_collections' "Did you mean" hint. An error about the user's input raised while the command runs
(`data_pipelines.cli_errors.USER_ERRORS`, storage access) is printed the same way by `main_with_user_errors`.
`--debug` or SARMAE_DEBUG=1 shows the tracebacks.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from data_pipelines import cli_errors
from sarmae_jax.runtime import paths

_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of user errors (bad config values, refused "
                           "outputs, missing files); also SARMAE_DEBUG=1.")
USER_ERRORS = cli_errors.USER_ERRORS + (paths.StorageAccessError,)


def _text(error: BaseException) -> str:
    """The message of `error`, unwrapped: ml_collections raises AttributeError(KeyError(message))."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return error.args[0] if error.args and isinstance(error.args[0], str) else str(error)


def _message(error: BaseException) -> str:
    return "; ".join(line.strip() for line in _text(error).splitlines() if line.strip())


def _config_override(argv: Sequence[str], error: BaseException) -> str:
    """The --config.* flag the parse error is about (ml_collections does not say), found by its key name."""
    key = _text(error).splitlines()[0].strip("'\"") if error.args else ""
    for arg in argv:
        if arg.startswith("--config.") and key and key in arg.split("=", 1)[0].split("."):
            return arg.split("=", 1)[0]
    return "a --config override"


def parse_flags(prog: str, argv: Sequence[str], then: Callable[[], None] = lambda: None) -> list[str]:
    """absl `flags_parser`: parses `argv`; an error in a --config file or override exits 2 with one line."""
    try:
        parsed = flags.FLAGS(argv)
    except flags.Error as e:  # a bad flag value or a missing required flag: absl's message names it
        if cli_errors.debug_requested(argv[1:]):
            raise
        print(f"{prog}: error: {_message(e)}", file=sys.stderr)
        sys.exit(cli_errors.EXIT_USER_ERROR)
    except (AttributeError, KeyError, TypeError, ValueError, FileNotFoundError, SyntaxError) as e:
        if cli_errors.debug_requested(argv[1:]):
            raise
        if isinstance(e, (AttributeError, KeyError)):
            message = f"{_config_override(argv, e)}: no such config key {_message(e)}"
        else:
            message = f"--config: {_message(e)}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(cli_errors.EXIT_USER_ERROR)
    then()
    return parsed


def main_with_user_errors(prog: str, main: Callable[[list[str]], Any],
                          user_errors: tuple[type[BaseException], ...] = ()) -> Callable[[list[str]], Any]:
    """`main` for absl's app.run: a user error exits 2 with one line unless --debug / SARMAE_DEBUG=1."""
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS + tuple(user_errors) as e:
            if _DEBUG.value or cli_errors.debug_requested([]):
                raise
            sys.exit(cli_errors.report(prog, e))
    return wrapped
