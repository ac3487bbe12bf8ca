"""What a new user ran into, each as the scenario that showed it: double charges after a caught
error, unstable callable identities, foreign files, empty paths, shared try/do ids, async
predicates, argument mismatches, unencodable results, and messages."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from durably import (
    ConfigurationError,
    HandlerNotFoundError,
    InMemoryStepStorage,
    JsonCodec,
    RetryPolicy,
    SerializationError,
    SqliteStepStorage,
    StepStatus,
    StorageError,
    WorkflowStepError,
    current_step,
)
from durably.testing import FakeClock, create_async_test_runtime, create_test_runtime

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


# ------------------------------------------------------------------ 1. numbers given back

CHARGE_PROGRAM = """
    import sys
    from durably import DurableWorkflowRuntime, SqliteStepStorage, StorageError
    db, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(db, busy_timeout=0.2),
                                     workflow_id="order-1")

    @runtime.action("Pay.charge")
    def charge(amount):
        with open(log, "a") as out:
            out.write(f"charged {amount}\\n")
        return {"charged": amount}

    if mode == "retry-after-lock":
        try:
            runtime.do("Pay.charge", 50)
        except StorageError as error:
            print("locked:", error, flush=True)
        sys.stdin.readline()          # the lock holder has let go
    print("result:", runtime.do("Pay.charge", 50), flush=True)
    runtime.close()
"""

LOCK_HOLDER = """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("holding", flush=True)
    sys.stdin.readline()
    conn.execute("ROLLBACK")
"""


@pytest.mark.slow
def test_a_call_retried_after_a_lock_timeout_does_not_charge_twice_over_two_runs(
        tmp_path: Path) -> None:
    """A program that catches StorageError (another process held the write lock past
    busy_timeout) and calls again continues the same step; a later run replays it: one
    charge in all."""
    db, log = str(tmp_path / "shop.db"), str(tmp_path / "charges.log")
    SqliteStepStorage(db).close()
    env = {**os.environ, "PYTHONPATH": SRC}
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOCK_HOLDER), db],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env=env) as holder, \
         subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHARGE_PROGRAM), db, log,
                           "retry-after-lock"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as program:
        assert holder.stdout is not None and holder.stdin is not None
        assert program.stdout is not None and program.stdin is not None
        assert holder.stdout.readline().strip() == "holding"
        line = program.stdout.readline()
        assert line.startswith("locked:") and "busy_timeout=0.2 s" in line, line
        holder.communicate("\n", timeout=30)
        out, err = program.communicate("\n", timeout=60)
    assert program.returncode == 0, err
    assert "result: {'charged': 50}" in out
    rerun = _python(CHARGE_PROGRAM, db, log, "plain")  # the next run of the same program
    assert rerun.returncode == 0, rerun.stderr
    assert Path(log).read_text().splitlines() == ["charged 50"]
    store = SqliteStepStorage(db)
    assert [r.step_id.endswith("#1") for r in store.list()] == [False]
    store.close()


def test_calling_again_after_a_caught_step_error_continues_the_same_step(
        tmp_path: Path) -> None:
    """Catching WorkflowStepError and calling again reuses the step (a fresh budget for the
    FAILED record), so the next run replays that one success: two handler runs, not three."""
    db = tmp_path / "shop.db"
    runs: list[int] = []

    def program() -> Any:
        runtime = create_test_runtime(storage=SqliteStepStorage(db))

        @runtime.action("Pay.charge")
        def charge(amount: int) -> str:
            runs.append(amount)
            if len(runs) == 1:
                raise ConnectionError("gateway down")
            return "paid"

        try:
            return runtime.do("Pay.charge", 50)
        except WorkflowStepError:
            return runtime.do("Pay.charge", 50)
        finally:
            runtime.close()

    assert program() == "paid"
    assert program() == "paid"  # the next run: replayed
    assert runs == [50, 50]


def test_calling_again_after_handler_not_found_uses_the_same_step() -> None:
    """A call that failed because nothing was registered gives its number back too."""
    runtime = create_test_runtime()
    with pytest.raises(HandlerNotFoundError):
        runtime.do("Pay.charge", 1)
    runtime.register("Pay.charge", lambda amount: "paid")
    assert runtime.do("Pay.charge", 1) == "paid"
    rerun = create_test_runtime(storage=runtime.storage)
    rerun.register("Pay.charge", lambda amount: pytest.fail("replayed step ran"))
    assert rerun.do("Pay.charge", 1) == "paid"
    assert [r.step_id.endswith("#1") for r in runtime.storage.list()] == [False]


def test_gathered_calls_keep_their_numbers_when_one_fails() -> None:
    """Concurrent identical calls keep the numbers they were given; a failure gives back only
    the latest number, so a later call does not take a number that is still in use."""

    async def main() -> list[Any]:
        runtime = create_async_test_runtime()
        outcomes = iter([ValueError("first fails"), "second", "third"])

        async def step(data: Any) -> Any:
            outcome = next(outcomes)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        runtime.register("A.b", step)
        results = await asyncio.gather(runtime.do("A.b", 1), runtime.do("A.b", 1),
                                       return_exceptions=True)
        ids = sorted(r.step_id[-2:] for r in runtime.storage.list())
        return [type(results[0]).__name__, results[1], ids]

    name, second, ids = asyncio.run(main())
    assert name == "WorkflowStepError" and second == "second"
    assert len(ids) == 2  # the base id and #1 both exist: no number was reused


# ------------------------------------------------------------------ 2. stable identities


def test_a_lambda_is_refused_by_do_unless_it_has_a_step_id() -> None:
    """Two lambdas in one module would share an identity and replay each other's results."""
    runtime = create_test_runtime()
    with pytest.raises(ConfigurationError, match="stable name") as caught:
        runtime.do(lambda x: x + 1, 1)
    assert caught.value.field == "action"
    assert runtime.storage.list() == []
    assert runtime.do(lambda x: x + 1, 1, step_id="plus-one") == 2
    assert runtime.try_(lambda x: x * 100, 1) == 100  # try_ stores nothing: any callable


def test_local_functions_and_partials_are_refused_too() -> None:
    """A function defined inside another, or a functools.partial, has no stable name."""
    import functools

    runtime = create_test_runtime()

    def local(x: int) -> int:
        return x

    for action in (local, functools.partial(pow, 2)):
        with pytest.raises(ConfigurationError, match="stable name"):
            runtime.do(action, 3)


class Mailer:
    """A class whose bound methods and instances are actions."""

    def send(self, to: str) -> str:
        return f"sent to {to}"

    def __call__(self, to: str) -> str:
        return f"called for {to}"


def test_bound_methods_and_callable_instances_are_named_by_their_class() -> None:
    """module:Class.method for a bound method, module:Class.__call__ for an instance: two
    instances are the same action."""
    runtime = create_test_runtime()
    assert runtime.do(Mailer().send, "ann") == "sent to ann"
    assert runtime.do(Mailer(), "bob") == "called for bob"
    assert [r.action for r in runtime.storage.list()] == [
        f"{__name__}:Mailer.send", f"{__name__}:Mailer.__call__"]


APP = '''
import sys
from durably import DurableWorkflowRuntime, SqliteStepStorage

def charge(amount):
    with open(sys.argv[2] if len(sys.argv) > 2 else "charges.log", "a") as log:
        log.write("charged\\n")
    return amount

def main(db="shop.db"):
    runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(db), workflow_id="order-7")
    print(runtime.do(charge, 5))
    runtime.close()

if __name__ == "__main__":
    main(sys.argv[1])
'''


@pytest.mark.slow
def test_a_script_and_its_import_name_a_function_alike(tmp_path: Path) -> None:
    """`python app.py` and `import app; app.main()` are the same action: no second charge."""
    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": SRC}
    first = subprocess.run([sys.executable, "app.py", "shop.db"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    second = _python("import app; app.main('shop.db')", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "charges.log").read_text().splitlines() == ["charged"]
    store = SqliteStepStorage(tmp_path / "shop.db")
    assert [r.action for r in store.list()] == ["app:charge"]
    store.close()


def test_a_function_of_python_dash_c_is_refused(tmp_path: Path) -> None:
    """A __main__ without a spec or a file cannot name its functions stably."""
    done = _python("""
        from durably.testing import create_test_runtime
        def charge(x):
            return x
        try:
            create_test_runtime().do(charge, 1)
        except Exception as error:
            print(type(error).__name__, error)
    """)
    assert done.stdout.startswith("ConfigurationError") and "stable name" in done.stdout


# ------------------------------------------------------------------ 3, 4. foreign files


def test_another_applications_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A file with tables that are not durably's is refused, never switched to WAL or given
    durably's tables; the message names the path and the tables found."""
    path = tmp_path / "crm.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match="not a durably database") as caught:
        SqliteStepStorage(path)
    assert "customers" in str(caught.value) and "orders" in str(caught.value)
    assert caught.value.path == str(path)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_a_file_with_a_user_version_but_no_durably_table_is_not_told_to_upgrade(
        tmp_path: Path) -> None:
    """Another application's user_version is not mistaken for a newer durably schema."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError) as caught:
        SqliteStepStorage(path)
    assert "not a durably database" in str(caught.value)
    assert "upgrade" not in str(caught.value)
    assert path.read_bytes() == before


def test_an_empty_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SqliteStepStorage(os.environ.get("DB", "")) must not become a silent temporary
    database that every run starts afresh; a directory is no database either."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="memory") as caught:
        SqliteStepStorage("")
    assert caught.value.field == "path"
    with pytest.raises(StorageError, match="directory"):
        SqliteStepStorage(Path(""))  # pathlib spells it "."
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 5, 6, 7. ids and retries


def test_try_and_do_of_the_same_call_have_different_ids_and_keys() -> None:
    """A payment provider must not de-duplicate a real charge against an earlier trial."""
    runtime = create_test_runtime()
    keys: list[tuple[str, str]] = []

    @runtime.action("Pay.charge")
    def charge(amount: int) -> int:
        step = current_step()
        assert step is not None
        keys.append((step.step_id, step.idempotency_key))
        return amount

    runtime.try_("Pay.charge", 10)
    runtime.do("Pay.charge", 10)
    (trial_id, trial_key), (real_id, real_key) = keys
    assert trial_id != real_id and trial_key != real_key
    assert [r.step_id for r in runtime.storage.list()] == [real_id]


def test_an_async_retry_if_is_refused_when_the_policy_is_built() -> None:
    """Its coroutine would be truthy: "do not retry" would retry every time."""

    async def never(error: BaseException) -> bool:
        return False

    class AsyncPredicate:
        async def __call__(self, error: BaseException) -> bool:
            return False

    for predicate in (never, AsyncPredicate()):
        with pytest.raises(ConfigurationError, match="plain function") as caught:
            RetryPolicy(retry_if=predicate)  # type: ignore[arg-type]
        assert caught.value.field == "retry_if"


def test_arguments_that_do_not_fit_the_handler_fail_at_once() -> None:
    """do("Math.add", (1, 2)) with def add(a, b) raises TypeError at once: no backoff, the
    step recorded FAILED, and its number given back."""
    clock = FakeClock()
    runtime = create_test_runtime(clock=clock, retry_policy=RetryPolicy(max_attempts=5))

    @runtime.action("Math.add")
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="argument"):
        runtime.do("Math.add", (1, 2))
    assert clock.sleeps == []
    (record,) = runtime.storage.list()
    assert record.status is StepStatus.FAILED and record.attempts == 1
    assert record.error is not None and record.error.type == "TypeError"
    runtime.register("Math.sum", lambda pair: sum(pair))
    assert runtime.do("Math.sum", (1, 2)) == 3


def test_a_type_error_inside_the_handler_is_retried_as_usual() -> None:
    """Only a call that cannot bind is a programming error; a TypeError the handler raises is
    an ordinary failure."""
    runtime = create_test_runtime(retry_policy=RetryPolicy(max_attempts=3, initial_delay=0))
    calls: list[int] = []

    @runtime.action("Math.half")
    def half(n: Any) -> Any:
        calls.append(n)
        if len(calls) < 3:
            raise TypeError("flaky type")
        return n / 2

    assert runtime.do("Math.half", 4) == 2
    assert len(calls) == 3


# ------------------------------------------------------------------ 8. your own types


@dataclasses.dataclass(frozen=True)
class Invoice:
    """A result type users return."""

    number: str
    total: float
    issued: dt.date


class Color(enum.Enum):
    """A plain Enum."""

    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    """An IntEnum: lossy unless registered."""

    LOW = 1
    HIGH = 2


PATH_TYPE = (PurePosixPath, str, PurePosixPath)


def test_registered_types_round_trip_as_results_and_hash_as_arguments(tmp_path: Path) -> None:
    """JsonCodec(types=[...]) stores dataclasses, Enums and any type with a pair of functions;
    a registered IntEnum comes back as itself; a dataclass can be a step's argument."""
    codec = JsonCodec(types=[Invoice, Color, Level, PATH_TYPE])
    db = tmp_path / "s.db"
    ran: list[Any] = []

    def build() -> Any:
        runtime = create_test_runtime(storage=SqliteStepStorage(db), codec=JsonCodec(
            types=[Invoice, Color, Level, PATH_TYPE]))

        @runtime.action("Billing.issue")
        def issue(invoice: Invoice) -> dict[str, Any]:
            ran.append(invoice)
            return {"invoice": invoice, "color": Color.BLUE, "level": Level.HIGH,
                    "file": PurePosixPath("/srv/invoices") / invoice.number}

        return runtime

    invoice = Invoice("INV-1", 99.5, dt.date(2026, 12, 1))
    first = build()
    result = first.do("Billing.issue", invoice)
    first.close()
    replay = build()
    assert replay.do("Billing.issue", invoice) == result
    replay.close()
    assert ran == [invoice]
    assert result["invoice"] == invoice and result["color"] is Color.BLUE
    assert type(result["level"]) is Level
    assert result["file"] == PurePosixPath("/srv/invoices/INV-1")
    text = codec.encode(invoice)
    assert f"{__name__}:Invoice" in text and codec.decode(text) == invoice


def test_a_mapping_names_types_by_key_so_a_class_can_move() -> None:
    """types={"invoice": Invoice} tags by the key, not by where the class lives."""
    codec = JsonCodec(types={"invoice": Invoice})
    text = codec.encode(Invoice("A", 1.0, dt.date(2026, 1, 1)))
    assert '"__durably__":"invoice"' in text and __name__ not in text


def test_an_unencodable_result_says_the_handler_ran_and_how_to_fix_it() -> None:
    """The message names the type, the path, the step and the action, says the handler ran,
    and offers the ways out."""
    runtime = create_test_runtime()
    runtime.register("Billing.issue", lambda n: {"invoice": Invoice("X", 1.0, dt.date.today())})
    with pytest.raises(SerializationError) as caught:
        runtime.do("Billing.issue", 1)
    text = str(caught.value)
    assert f"{__name__}.Invoice" in text and 'result["invoice"]' in text
    assert "Billing.issue" in text and "ran" in text and caught.value.step_id in text
    assert "JsonCodec(types=" in text and "asdict" in text


def test_an_unknown_tag_in_storage_names_the_step_and_the_tag(tmp_path: Path) -> None:
    """A record written with a registered type, read by a codec that lacks it, is a
    StorageError naming the step and the tag; nothing is imported by that name."""
    storage = InMemoryStepStorage()
    writer = create_test_runtime(storage=storage, codec=JsonCodec(types={"invoice": Invoice}))
    writer.register("Billing.issue", lambda n: Invoice("X", 1.0, dt.date(2026, 1, 1)))
    writer.do("Billing.issue", 1)
    reader = create_test_runtime(storage=storage)
    with pytest.raises(StorageError) as caught:
        reader.do("Billing.issue", 1)
    (record,) = storage.list()
    assert caught.value.step_id == record.step_id
    assert "'invoice'" in str(caught.value)


def test_bad_type_registrations_are_refused() -> None:
    """A registration that is not a dataclass, an Enum or a triple, or a name taken twice or
    shadowing a built-in tag, is a ConfigurationError."""
    for types in ([object], [(Invoice, 1, 2)], {"date": Invoice}, [Invoice, Invoice]):
        with pytest.raises(ConfigurationError) as caught:
            JsonCodec(types=types)  # type: ignore[arg-type]
        assert caught.value.field == "types"


# ------------------------------------------------------------------ 11. messages


def test_a_step_error_names_its_workflow_and_reads_plainly() -> None:
    """No "failed after 1 attempt (used all 1 attempts)"; the workflow is named; an error
    without a message is shown by its type alone."""
    runtime = create_test_runtime(workflow_id="order-9")
    runtime.register("Pay.charge", lambda amount: (_ for _ in ()).throw(ConnectionError()))
    with pytest.raises(WorkflowStepError) as caught:
        runtime.do("Pay.charge", 1)
    text = str(caught.value)
    assert "order-9" in text and "Pay.charge" in text
    assert "failed after 1 attempt (max_attempts=1)" in text
    assert "used all" not in text
    assert text.endswith(": ConnectionError")
    assert caught.value.workflow_id == "order-9"


# ------------------------------------------------------------------ the decorator


def test_step_decorator_makes_each_call_a_durable_step() -> None:
    """@runtime.step: positional and keyword arguments, replay across runs, .try_ stores
    nothing, __wrapped__ is the plain function."""
    storage = InMemoryStepStorage()
    ran: list[tuple[Any, ...]] = []

    def build() -> Any:
        runtime = create_test_runtime(storage=storage)

        @runtime.step("Payment.charge", retry=RetryPolicy(max_attempts=2, initial_delay=0))
        def charge(card: str, amount: float, *, currency: str = "EUR") -> str:
            ran.append((card, amount, currency))
            return f"{card}:{amount}:{currency}"

        return runtime, charge

    _, charge = build()
    assert charge("4242", 12.5) == "4242:12.5:EUR"
    assert charge("4242", 12.5, currency="USD") == "4242:12.5:USD"
    assert charge.try_("4242", 1.0) == "4242:1.0:EUR"
    assert charge.__wrapped__("x", 2.0) == "x:2.0:EUR"
    assert charge.name == "Payment.charge" and charge.__name__ == "charge"
    assert len(storage.list()) == 2
    _, again = build()
    assert again("4242", 12.5) == "4242:12.5:EUR"  # replayed
    assert again("4242", 12.5, currency="USD") == "4242:12.5:USD"
    assert ran == [("4242", 12.5, "EUR"), ("4242", 12.5, "USD"), ("4242", 1.0, "EUR"),
                   ("x", 2.0, "EUR")]


def test_a_step_call_and_the_proxy_call_are_one_step() -> None:
    """charge(card, 12.5) and p.Payment(card).charge(12.5) hash alike; f() has context None."""
    runtime = create_test_runtime()
    ran: list[Any] = []

    @runtime.step("Payment.charge")
    def charge(card: str, amount: float) -> float:
        ran.append(card)
        return amount

    @runtime.step("Clock.tick")
    def tick() -> str:
        return "tick"

    charge("c", 12.5)
    assert runtime.for_workflow("test").proxy().Payment("c").charge(12.5) == 12.5
    assert tick() == "tick" and runtime.for_workflow("test").do("Clock.tick") == "tick"
    assert ran == ["c"]


def test_step_arguments_that_do_not_bind_raise_before_anything_is_written() -> None:
    """A wrong call is a TypeError from the call itself; nothing is stored."""
    runtime = create_test_runtime()

    @runtime.step("A.b")
    def b(x: int) -> int:
        return x

    with pytest.raises(TypeError):
        b(1, 2)  # type: ignore[call-arg]
    assert runtime.storage.list() == []


def test_step_needs_a_name_for_a_lambda_and_accepts_bare_use() -> None:
    """@runtime.step on a lambda without a name is refused; bare @runtime.step names the
    function module:qualname."""
    runtime = create_test_runtime()
    with pytest.raises(ConfigurationError, match="stable name"):
        runtime.step()(lambda x: x)
    shout = runtime.step(_shout)
    assert shout("hi") == "HI" and shout.name == f"{__name__}:_shout"


def _shout(text: str) -> str:
    return text.upper()


def test_async_step_functions_return_awaitables() -> None:
    """In the async runtime calling a step returns an awaitable; async and plain functions
    both work."""

    async def main() -> list[Any]:
        runtime = create_async_test_runtime()

        @runtime.step("Net.get")
        async def get(url: str) -> str:
            await asyncio.sleep(0)
            return url.upper()

        @runtime.step("Text.strip")
        def strip(text: str) -> str:
            return text.strip()

        return [await get("u"), await strip(" x "), await get.try_("v")]

    assert asyncio.run(main()) == ["U", "x", "V"]


# ------------------------------------------------------------------ policy ergonomics


def test_retry_on_retries_only_those_types_and_single_types_are_accepted() -> None:
    """retry_on=ConnectionError retries that and fails anything else at once; a single type
    is kept as a 1-tuple, for non_retryable too; timedelta durations become seconds."""
    policy = RetryPolicy(retry_on=ConnectionError, non_retryable=KeyError,
                         initial_delay=dt.timedelta(milliseconds=1500),
                         max_elapsed=dt.timedelta(minutes=1), max_attempts=3)
    assert policy.retry_on == (ConnectionError,) and policy.non_retryable == (KeyError,)
    assert policy.initial_delay == 1.5 and policy.max_elapsed == 60.0
    runtime = create_test_runtime(retry_policy=dataclasses.replace(policy, initial_delay=0))
    calls: list[str] = []

    def flaky(kind: str) -> str:
        calls.append(kind)
        if kind == "value":
            raise ValueError("bad data")
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    runtime.register("A.b", flaky)
    assert runtime.do("A.b", "net") == "ok" and calls == ["net", "net", "net"]
    calls.clear()
    with pytest.raises(WorkflowStepError, match="not in retry_on"):
        runtime.do("A.b", "value")
    assert calls == ["value"]
    with pytest.raises(ConfigurationError):
        RetryPolicy(initial_delay=dt.timedelta(seconds=-1))
