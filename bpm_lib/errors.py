"""Domain errors. Every failure bpm-eval itself diagnoses derives from :class:`BpmError`.

Plain argument mistakes raise ``ValueError``/``TypeError`` naming the argument; the
classes below are for failures of the *work* (a sample that cannot be parsed, a model
that cannot be loaded, a dataset record that is malformed).
"""

from __future__ import annotations


class BpmError(Exception):
    """Base class for every domain failure raised by bpm-eval."""


class ConfigError(BpmError, ValueError):
    """A configuration file or option is invalid (unknown key, wrong type, bad value)."""


class ParseError(BpmError):
    """An instruction could not be parsed into a valid ParsedInstruction."""


class DataError(BpmError):
    """A dataset record, image, mask or manifest line is missing or malformed."""


class ModelLoadError(BpmError):
    """A model or checkpoint could not be loaded; the message says what is missing."""


class EditError(BpmError):
    """An editor could not produce an edited image for a sample."""


class LocalizationError(BpmError):
    """The edit region could not be localized for a sample."""


class CalibrationError(BpmError, ValueError):
    """Normalisation bounds cannot be fitted or applied (degenerate pool, unknown id)."""


class TrackingError(BpmError):
    """The tracking server (MLflow) could not be reached or rejected a request."""
