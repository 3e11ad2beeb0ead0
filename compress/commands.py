"""Further subcommands of `python -m compress` register themselves here (see cli.command)."""
