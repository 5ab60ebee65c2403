"""The exceptions that users of `core` can catch.

Every error raised for bad input derives from `MTLInputError` (itself a `ValueError`), so a
training loop can catch one class. The engine raises them before it writes any `.grad`.
"""

from __future__ import annotations


class MTLInputError(ValueError):
    """Base class of every input error raised by `core`."""


class NoTasksError(MTLInputError):
    """Raised when zero task losses are given (K = 0)."""


class LossShapeError(MTLInputError):
    """Raised when a task loss is not a scalar (or the stacked losses are not a vector)."""


class NonFiniteLossError(MTLInputError):
    """Raised when a task loss is NaN or infinite; the message names the task and the value."""


class NonFiniteGradientError(MTLInputError):
    """Raised when a task's gradient contains NaN or infinity although its loss is finite."""


class UnreachedParameterError(MTLInputError):
    """Raised when a parameter declared shared (or a task's own) receives no gradient from any loss."""


class DeviceMismatchError(MTLInputError):
    """Raised when losses, parameters or the representation live on different devices."""


class DtypeMismatchError(MTLInputError):
    """Raised when losses, parameters or the representation have different floating dtypes."""


class LossDomainError(MTLInputError):
    """Raised when a method or transform needs losses in a domain (e.g. positive) they are not in."""


class InvalidHyperparameterError(MTLInputError):
    """Raised when a method or transform is constructed with an invalid hyperparameter."""


class UnknownMethodError(MTLInputError, KeyError):
    """Raised by the registry for a method name it does not know; the message lists the names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
