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
    from . import bench, compare_cmd, fit_cmd, solvers_cmd

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
        compare_cmd,
        help="one trained field through every discretisation (accuracy study)",
        description="Train the DREAM field once with the Euler rule, then run it through every solver.",
    )
    _add_job(
        sub,
        "fit",
        fit_cmd,
        help="train on a built-in data set or a CSV (classification or forecasting)",
        description="Train a DREAM model with validation, early stopping, checkpoints and exact resume.",
    )
    return parser


#: what a job reports as one line and exit status 2: user mistakes (CheckpointError is a ValueError;
#: ImportError: a missing extra), files and folders that cannot be read or written (OSError), and a
#: training run that diverged (TrainingDivergedError is a RuntimeError raised only for that)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown after its help."""


def _add_job(sub: Any, name: str, module: ModuleType, help: str, description: str) -> None:
    """A subcommand whose options (``add_arguments``), examples (``EXAMPLES``) and runner
    (``main_from_args``) live in ``module``; a user mistake becomes one line and exit status 2."""
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=module.EXAMPLES,
        formatter_class=HelpFormatter,
    )
    module.add_arguments(p)

    def run(a: argparse.Namespace) -> int:
        from ..classify import TrainingDivergedError

        try:
            return module.main_from_args(a)
        except (*USER_ERRORS, TrainingDivergedError) as exc:
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
