"""`python -m compress`: a thin command line over the library functions.

Exit status 0 on success, 2 with one line on stderr for a bad invocation or bad input
(`InputError`), 1 for anything else. Set COMPRESS_DEBUG=1 to see tracebacks.

One registry (`registry.COMMANDS`); each module registers its subcommands when imported:
`basic` (golden), `dcz` (pack, unpack, info), `pipeline` (train, prune, quantize, pipeline,
report, compress), `user` (encode-inputs, sensitivity). The stages after compress add theirs
through the `deepcomp_eie.commands` entry points (pyproject.toml; export-rom is images.cli's),
so compress imports none of them.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points

from ..atomic import save_npy  # noqa: F401 (was compress.cli.save_npy)
from ..errors import OneLineParser as _Parser
from ..errors import run_main
from . import basic, dcz, pipeline, user  # noqa: F401 (they register their commands)
from .registry import COMMANDS, command  # noqa: F401

for _plugin in entry_points(group="deepcomp_eie.commands"):
    _plugin.load()  # registers its commands


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m compress", description="Deep Compression tooling")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (add_arguments, _run, help) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help, description=help))
    return parser


def main(argv: list[str] | None = None) -> int:
    def body():
        args = build_parser().parse_args(argv)
        return COMMANDS[args.cmd][1](args)

    return run_main(body, debug_env="COMPRESS_DEBUG")
