"""Errors that the CLI reports as one clear message and a non-zero exit."""


class StudyError(Exception):
    """A user-facing failure: the message names the value and the fix."""
