"""The ``dreamode`` command line: ``dreamode bench``, ``solvers``, ``compare`` and ``fit``.

Installed as the console script ``dreamode`` (``[project.scripts]``); ``python -m dreamode`` is the
same. Every subcommand reports a bad option as one line, ``dreamode <cmd>: error: ...``, and exits
with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    """The parser with every subcommand."""
    from .. import compare, fit
    from . import bench, solvers_cmd

    parser = Parser(
        prog="dreamode",
        description="dreamode: the DREAM recurrent cell as an ODE vector field.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    bench.add_parser(sub)
    solvers_cmd.add_parser(sub)
    _add_job(
        sub,
        "compare",
        compare,
        help="one trained field through every discretisation (accuracy study)",
        description="Train the DREAM field once with the Euler rule, then run it through every solver.",
    )
    _add_job(
        sub,
        "fit",
        fit,
        help="train on a built-in data set or a CSV (classification or forecasting)",
        description="Train a DREAM model with validation, early stopping, checkpoints and exact resume.",
    )
    return parser


#: user mistakes a job reports as one line (CheckpointError is a ValueError; ImportError: a missing extra)
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


def _add_job(sub: Any, name: str, module: ModuleType, help: str, description: str) -> None:
    """A subcommand whose options (``add_arguments``), examples (``EXAMPLES``) and runner
    (``main_from_args``) live in ``module``; a user mistake becomes one line and exit status 2."""
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=module.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(p)

    def run(a: argparse.Namespace) -> int:
        try:
            return module.main_from_args(a)
        except USER_ERRORS as exc:
            p.error(str(exc))

    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dreamode`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


__all__ = ["Parser", "build_parser", "main"]
