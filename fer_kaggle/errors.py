"""The one error type a user's mistake raises.

The CLI catches it once, prints its message on one line and exits with status 2;
anything else is a bug and keeps its traceback.
"""


class FerKaggleError(ValueError):
    """A problem with the user's input or run folder, worded for the user."""
