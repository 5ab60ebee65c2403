"""The error every dataset loader raises for a missing or corrupt file."""

from __future__ import annotations

from core.errors import MTLInputError


class DatasetError(MTLInputError):
    """A dataset file is missing or corrupt; the message names the file and what was expected."""
