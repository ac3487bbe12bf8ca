"""durably: embeddable durable execution. Completed steps never run twice.

Layering (lower modules never import higher ones; tests/test_layering.py enforces it)::

    _errors -> _records -> _codec / _retry / _clock -> _ids / _registry -> _view
            -> _context -> _storage/* -> _core -> _proxy -> _runtime_base
            -> _runtime / _aio -> testing

This module only re-exports the public names. The asyncio flavour is imported on first use
(through ``__getattr__``), so that programs that never touch it do not pay for importing
asyncio.
"""

import typing as _typing

from ._clock import AsyncSystemClock as AsyncSystemClock
from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._codec import Codec as Codec
from ._codec import JsonCodec as JsonCodec
from ._codec import PickleCodec as PickleCodec
from ._context import current_step as current_step
from ._core import StepHooks as StepHooks
from ._errors import ConfigurationError as ConfigurationError
from ._errors import DurableError as DurableError
from ._errors import HandlerNotFoundError as HandlerNotFoundError
from ._errors import NonRetryableError as NonRetryableError
from ._errors import RetryAfterError as RetryAfterError
from ._errors import SerializationError as SerializationError
from ._errors import StepInterruptedError as StepInterruptedError
from ._errors import StepTimeoutError as StepTimeoutError
from ._errors import StorageError as StorageError
from ._errors import WorkflowStepError as WorkflowStepError
from ._proxy import Proxy as Proxy
from ._records import ErrorInfo as ErrorInfo
from ._records import Pipeline as Pipeline
from ._records import StepContext as StepContext
from ._records import StepEvent as StepEvent
from ._records import StepRecord as StepRecord
from ._records import StepStatus as StepStatus
from ._registry import Domain as Domain
from ._retry import RetryPolicy as RetryPolicy
from ._runtime import DurableWorkflowRuntime as DurableWorkflowRuntime
from ._storage import StepStorage as StepStorage
from ._storage._memory import InMemoryStepStorage as InMemoryStepStorage
from ._storage._sqlite import SqliteStepStorage as SqliteStepStorage

if _typing.TYPE_CHECKING:
    from ._aio import AsyncDurableWorkflowRuntime as AsyncDurableWorkflowRuntime

__version__ = "0.1.0"

_LAZY = {"AsyncDurableWorkflowRuntime"}


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        from . import _aio

        return getattr(_aio, name)
    raise AttributeError(f"module 'durably' has no attribute {name!r}")


__all__ = [
    "AsyncDurableWorkflowRuntime",
    "AsyncSystemClock",
    "Clock",
    "Codec",
    "ConfigurationError",
    "Domain",
    "DurableError",
    "DurableWorkflowRuntime",
    "ErrorInfo",
    "HandlerNotFoundError",
    "InMemoryStepStorage",
    "JsonCodec",
    "NonRetryableError",
    "PickleCodec",
    "Pipeline",
    "Proxy",
    "RetryAfterError",
    "RetryPolicy",
    "SerializationError",
    "SqliteStepStorage",
    "StepContext",
    "StepEvent",
    "StepHooks",
    "StepInterruptedError",
    "StepRecord",
    "StepStatus",
    "StepStorage",
    "StepTimeoutError",
    "StorageError",
    "SystemClock",
    "WorkflowStepError",
    "current_step",
]
