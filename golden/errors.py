"""User-facing errors: the command line prints their message on one line and exits 2."""


class UserError(Exception):
    """A mistake in what the user asked for (a name, a file, a width); no traceback."""
