"""Exceptions users can catch: every bad input ends in one of these, with a message
that says what was wrong and what was expected."""


class GFEError(ValueError):
    """Base class of all errors gfe raises on purpose."""


class DataError(GFEError):
    """Input data are missing, unreadable, empty, non-finite or of the wrong shape."""


class ModelFileError(GFEError):
    """A model directory or checkpoint is missing, incomplete or tampered with."""


class ConfigError(GFEError):
    """An option has a value gfe does not support."""


class TrainingError(GFEError):
    """Training cannot go on as configured, e.g. the loss became NaN or infinite."""
