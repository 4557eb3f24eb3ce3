"""Exceptions a user can act on.

Every error raised for bad input derives from :class:`FacexprError`; the CLI prints its message
(which names the file and says what to do) and exits non-zero without a traceback.
"""

from __future__ import annotations


class FacexprError(Exception):
    """Base class of all user-facing errors."""


class ImageReadError(FacexprError):
    """A file could not be read as an image (missing, empty, truncated, not an image, too large)."""


class NoFaceError(FacexprError):
    """No face was found where one is required."""


class OutputError(FacexprError):
    """An output could not be written (unwritable folder, disk full, would overwrite input)."""


class OutputExistsError(OutputError):
    """An output appeared while it was being written (another run): it was left as it is."""


class ConfigError(FacexprError):
    """An option, model name, Action Unit or emotion is not valid."""


class DatasetError(FacexprError):
    """A prepared dataset folder is missing files or is inconsistent."""
