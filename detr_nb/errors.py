"""Errors a user can fix themselves: the command line prints them as one line, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (an option, a file, a folder), stated in one line."""


class ConfigError(UserError, ValueError):
    """A training/evaluation setting that cannot work (``--batch-size 0``, ``--device cuda`` without CUDA...)."""
