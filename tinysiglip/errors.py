"""Errors that the tool reports to its users."""


class TinySigLIPError(Exception):
    """Base class of every error the tool raises on purpose."""
