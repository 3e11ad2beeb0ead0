"""Errors the command line turns into exit status 2 with one line on stderr."""


class InputError(ValueError):
    """Bad invocation or bad input: the message names the key, layer or file at fault."""
