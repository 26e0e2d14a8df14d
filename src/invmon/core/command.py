"""A subcommand of ``invmon``: a stage's settings, its ``run`` function and how a result reads.

The command line of a stage is derived from its settings (:mod:`invmon.core.settings`); the
command adds nothing but a description and the line printed at the end. ``invmon.cli`` keeps the
registry of commands and imports a stage's module only when that command runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from invmon.core import settings as options


class Incomplete(RuntimeError):
    """A run that did part of its work (``invmon predict`` with some images refused).

    Raised by a command's ``show``: ``output`` is printed as a complete run's would be, then each
    of ``details`` on stderr, then the error; the command exits 1.
    """

    def __init__(self, message: str, output: str | None = None, details: tuple[str, ...] = ()):
        super().__init__(message)
        self.output, self.details = output, details


@dataclass(frozen=True)
class Command:
    """One ``invmon`` subcommand.

    ``run(settings)`` does the work and returns a result; ``show(result, settings)`` is what is
    printed (None: nothing); it raises :class:`Incomplete` when the result is a partial failure
    that still has something to print. ``extend`` adds what fields cannot say (a mutually exclusive
    group); ``build`` replaces :func:`invmon.core.settings.from_args` when the settings are made
    from the options in a way of their own (a recipe resolved with a search result).
    """

    settings: type
    run: Callable[[Any], Any]
    description: str
    show: Callable[[Any, Any], str | None] | None = None
    extend: Callable[[argparse.ArgumentParser], None] | None = None
    build: Callable[[argparse.Namespace], Any] | None = None

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """The command's options: its settings' fields, then anything ``extend`` adds."""
        options.add_options(parser, self.settings)
        if self.extend is not None:
            self.extend(parser)

    def settings_from(self, args: argparse.Namespace):
        """The settings that parsed ``args`` describe."""
        return self.build(args) if self.build else options.from_args(self.settings, args)

    def execute(self, args: argparse.Namespace) -> str | None:
        """Build the settings from parsed ``args``, run, and return what to print."""
        settings = self.settings_from(args)
        result = self.run(settings)
        return self.show(result, settings) if self.show else None


def as_json(data) -> str:
    """``data`` as indented JSON (dataclass reports go through their ``to_dict``)."""
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    return json.dumps(data, indent=2, default=str)


@dataclass(frozen=True)
class Verbs:
    """A subcommand made of verbs (``invmon recount export``, ``invmon recount import``).

    Each verb is a :class:`Command` with its own options; the ``invmon`` registry sees one
    command. ``verbs`` maps a verb to its (command, one-line help).
    """

    verbs: dict[str, tuple[Command, str]]
    description: str

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """One sub-parser per verb, each with its command's options."""
        sub = parser.add_subparsers(
            dest="verb", required=True, metavar="VERB", parser_class=type(parser)
        )
        for name, (command, help_line) in self.verbs.items():
            command.add_options(
                sub.add_parser(name, help=help_line, description=command.description)
            )

    def execute(self, args: argparse.Namespace) -> str | None:
        """Run the verb that ``args`` names."""
        return self.verbs[args.verb][0].execute(args)
