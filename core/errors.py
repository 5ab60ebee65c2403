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


class UnreachedTaskError(UnreachedParameterError):
    """Raised when a task's loss reaches none of the shared parameters (or, in representation mode,
    not the representation): a detached loss, or one computed from features of another forward pass.
    Such a task would otherwise get a zero gradient and silently drop out of the step. The message
    names the task. A subclass of `UnreachedParameterError`, so existing handlers still catch it."""


class NoSharedParametersError(MTLInputError):
    """Raised when `shared_params` is empty (an empty list, or a generator such as
    `model.parameters()` that an earlier call already consumed)."""


class MetaDeviceError(MTLInputError):
    """Raised when the losses live on the meta device, which holds shapes but no values."""


class UnsupportedEngineModeError(MTLInputError):
    """Raised when a method is used in an engine mode ("full" or "representation") that its
    `engine_modes` does not list."""


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
