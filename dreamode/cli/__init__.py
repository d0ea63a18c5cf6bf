"""The ``dreamode`` command line: ``dreamode bench``, ``solvers``, ``compare`` and ``fit``.

Installed as the console script ``dreamode`` (``[project.scripts]``); ``python -m dreamode`` is the
same. Every subcommand reports a bad option as one line, ``dreamode <cmd>: error: ...``, and exits
with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    """The parser with every subcommand."""
    from . import bench, solvers_cmd

    parser = Parser(
        prog="dreamode",
        description="dreamode: the DREAM recurrent cell as an ODE vector field.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    bench.add_parser(sub)
    solvers_cmd.add_parser(sub)
    _add_compare(sub)
    _add_fit(sub)
    return parser


def _add_compare(sub: Any) -> None:
    """``dreamode compare``: the options and runner live in `dreamode.compare`."""
    from .. import compare

    p = sub.add_parser(
        "compare",
        help="one trained field through every discretisation (accuracy study)",
        description="Train the DREAM field once with the Euler rule, then run it through every solver.",
        epilog=compare.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_arguments(p)

    def run(a: argparse.Namespace) -> int:
        try:
            return compare.main_from_args(a)
        except (ValueError, FileNotFoundError) as exc:
            p.error(str(exc))

    p.set_defaults(func=run)


def _add_fit(sub: Any) -> None:
    """``dreamode fit``: the options and runner live in `dreamode.fit`."""
    from .. import fit
    from ..checkpoint import CheckpointError

    p = sub.add_parser(
        "fit",
        help="train on a built-in data set or a CSV (classification or forecasting)",
        description="Train a DREAM model with validation, early stopping, checkpoints and exact resume.",
        epilog=fit.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_arguments(p)

    def run(a: argparse.Namespace) -> int:
        try:
            return fit.main_from_args(a)
        except (ValueError, FileNotFoundError, ImportError, CheckpointError) as exc:
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
