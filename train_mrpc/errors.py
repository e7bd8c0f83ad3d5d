"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a flag, a file, a column, a value.

    The message must name the offending thing and say what was expected; the CLI prints it as
    ``train-mrpc: error: <message>`` and exits with status 2.
    """
