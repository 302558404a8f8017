"""One exception type for problems the user can fix; entry points print it as one line and exit 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""
