"""Every option of every `dreamode` command has help text and shows its default."""

import argparse

import pytest

from dreamode.cli import build_parser

COMMANDS = ["compare", "fit", "bench", "solvers"]


def _command_parser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_shows_its_default(name):
    parser = _command_parser(name)
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        option = action.option_strings[-1]
        assert action.help and len(action.help) > 10, f"{name} {option}: no help"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue  # a flag: off unless given
        formatter = parser.formatter_class(prog=parser.prog)  # the option's entry, as --help prints it
        formatter.add_argument(action)
        entry = " ".join(formatter.format_help().split())
        assert "default" in entry, f"{name} {option}: no default shown in {entry!r}"
