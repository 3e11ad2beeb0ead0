"""The one registry of `python -m compress` subcommands (the command modules add to it)."""

from __future__ import annotations

from collections.abc import Callable

# name -> (add_arguments(parser), run(args) -> int | None, help), in registration order.
COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}


def command(name: str, help: str):
    """Register `run` as subcommand `name`: @command(name, help)(add_arguments) over run."""
    def register(add_arguments):
        def wrap(run):
            COMMANDS[name] = (add_arguments, run, help)
            return run

        return wrap

    return register
