"""The one exception type that means "the user asked for something wrong"."""


class UserError(Exception):
    """Bad input from the user: the CLI prints it as one line and exits 2, no traceback."""
