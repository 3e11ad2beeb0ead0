"""Further subcommands of `python -m compress` register themselves here (see cli.command)."""
from . import cmd_dcz  # noqa: F401
from . import cmd_pipeline  # noqa: F401
from . import cmd_user  # noqa: F401
