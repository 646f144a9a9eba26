"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the problem and the fix; the CLI prints it
    without a traceback and exits non-zero.
    """
