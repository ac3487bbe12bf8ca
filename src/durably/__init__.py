"""durably: embeddable durable execution. Completed steps never run twice.

Layering (lower modules never import higher ones; tests/test_layering.py enforces it)::

    _errors -> _records / _display -> _tags / _retry / _clock -> _codec / _ids / _registry
            -> _forks / _export -> _view -> _context -> _storage/* -> _core / _waits
            -> _workflows -> _threads / _tasks / _handles / _proxy / _step -> _runs_api
            -> _runtime_base -> _runtime / _aio -> testing  (and above __init__: _cli)

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
from ._errors import OwnershipLost as OwnershipLost
from ._errors import RecoveryLimitError as RecoveryLimitError
from ._errors import RetryAfterError as RetryAfterError
from ._errors import RunCancelledError as RunCancelledError
from ._errors import RunClosedError as RunClosedError
from ._errors import RunConflictError as RunConflictError
from ._errors import RunNotFoundError as RunNotFoundError
from ._errors import SerializationError as SerializationError
from ._errors import StepInterruptedError as StepInterruptedError
from ._errors import StepNotFoundError as StepNotFoundError
from ._errors import StepTimeoutError as StepTimeoutError
from ._errors import StorageError as StorageError
from ._errors import WaitTimeoutError as WaitTimeoutError
from ._errors import WorkflowFailedError as WorkflowFailedError
from ._errors import WorkflowStepError as WorkflowStepError
from ._handles import AsyncRunHandle as AsyncRunHandle
from ._handles import AsyncWorker as AsyncWorker
from ._handles import AsyncWorkflow as AsyncWorkflow
from ._handles import RunHandle as RunHandle
from ._handles import Worker as Worker
from ._handles import Workflow as Workflow
from ._proxy import Proxy as Proxy
from ._records import ErrorInfo as ErrorInfo
from ._records import EventRecord as EventRecord
from ._records import Pipeline as Pipeline
from ._records import RunRecord as RunRecord
from ._records import RunStatus as RunStatus
from ._records import StepContext as StepContext
from ._records import StepEvent as StepEvent
from ._records import StepRecord as StepRecord
from ._records import StepStatus as StepStatus
from ._registry import Domain as Domain
from ._retry import RetryPolicy as RetryPolicy
from ._runtime import DurableWorkflowRuntime as DurableWorkflowRuntime
from ._step import AsyncStepFunction as AsyncStepFunction
from ._step import StepFunction as StepFunction
from ._storage import RunStorage as RunStorage
from ._storage import StepStorage as StepStorage
from ._storage._memory import InMemoryStepStorage as InMemoryStepStorage
from ._storage._sqlite import SqliteStepStorage as SqliteStepStorage
from ._workflows import RecoveryReport as RecoveryReport

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
    "AsyncRunHandle",
    "AsyncStepFunction",
    "AsyncSystemClock",
    "AsyncWorker",
    "AsyncWorkflow",
    "Clock",
    "Codec",
    "ConfigurationError",
    "Domain",
    "DurableError",
    "DurableWorkflowRuntime",
    "ErrorInfo",
    "EventRecord",
    "HandlerNotFoundError",
    "InMemoryStepStorage",
    "JsonCodec",
    "NonRetryableError",
    "OwnershipLost",
    "PickleCodec",
    "Pipeline",
    "Proxy",
    "RecoveryLimitError",
    "RecoveryReport",
    "RetryAfterError",
    "RetryPolicy",
    "RunCancelledError",
    "RunClosedError",
    "RunConflictError",
    "RunHandle",
    "RunNotFoundError",
    "RunRecord",
    "RunStatus",
    "RunStorage",
    "SerializationError",
    "SqliteStepStorage",
    "StepContext",
    "StepEvent",
    "StepFunction",
    "StepHooks",
    "StepInterruptedError",
    "StepNotFoundError",
    "StepRecord",
    "StepStatus",
    "StepStorage",
    "StepTimeoutError",
    "StorageError",
    "SystemClock",
    "WaitTimeoutError",
    "Worker",
    "Workflow",
    "WorkflowFailedError",
    "WorkflowStepError",
    "current_step",
]
