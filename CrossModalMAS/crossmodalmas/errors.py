"""Exceptions that the command line maps to its exit codes (2: bad input, 3: cancelled)."""


class InputError(ValueError):
    """A user's input is unusable; the message names the input and what is wrong with it.

    The command line prints the message on one line and exits with code 2.
    """


class CancelledError(Exception):
    """A run was cancelled by its ``cancel()`` callback or a signal; no output was written.

    The command line exits with code 3.
    """
