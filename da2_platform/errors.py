"""Errors the CLI turns into a clear message and a non-zero exit (no traceback)."""


class Da2Error(Exception):
    """Base class: a problem with the user's input or environment, stated in words."""


class DataError(Da2Error):
    """A data set is unusable: malformed JSON, missing images, bad annotations."""


class ConfigError(Da2Error):
    """An experiment config is malformed or inconsistent."""


class TrainingError(Da2Error):
    """Training cannot go on (NaN loss, checkpoint from another architecture...)."""


class TrackingError(Da2Error):
    """The MLflow tracking server or registry is unreachable or refuses a request."""
