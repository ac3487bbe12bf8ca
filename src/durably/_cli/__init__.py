"""``python -m durably``: see, repair, move and clean a store from a shell.

Reads open the store read-only (never creating, migrating or switching its journal mode), so
they work while workers write. Writes go through the public runtime API on a normal open,
fenced like any other write (a cancel bumps the fence). ``--json`` prints stored values only.

Exit codes: 0 ok; 1 not found (a run, a step, the database: a missing file is never created;
a store that cannot be used); 2 usage (bad arguments, a bare ``delete``, malformed JSON, an
export file that cannot be imported); 3 wrong state (cancel, resume or send-event where the
run's status does not allow it; an import whose runs are already in the store).

The commands are documented, with transcripts, in docs/operations.md. One module per kind of
command: ``_reading`` (look), ``_writing`` (act), ``_moving`` (export, import), on what
``_session`` shares.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from .._display import clip
from .._errors import (
    ConfigurationError,
    DurableError,
    RunClosedError,
    RunConflictError,
    RunNotFoundError,
    StepNotFoundError,
    StorageError,
)
from .._records import RunStatus, StepStatus
from ._moving import cmd_export, cmd_import
from ._reading import cmd_runs, cmd_show, cmd_step, cmd_steps
from ._session import NOT_FOUND, OK, USAGE, WRONG_STATE, CommandError, Session
from ._writing import cmd_cancel, cmd_delete, cmd_fork, cmd_resume, cmd_send_event

__all__ = ["main"]

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"durably: {message}\n")


def _parser() -> argparse.ArgumentParser:
    # The global options are accepted before or after the command (SUPPRESS keeps a
    # subcommand's unset copy from overwriting the value given before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, metavar="PATH",
                        help="the SQLite store")
    common.add_argument("--url", default=argparse.SUPPRESS, metavar="URL",
                        help="a PostgreSQL store (postgresql://...; the postgres extra)")
    common.add_argument("--schema", default=argparse.SUPPRESS, metavar="S",
                        help="the PostgreSQL schema of the store (default durably)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print stored values as JSON")
    common.add_argument("--now", default=argparse.SUPPRESS, metavar="TIME",
                        help="read and act as of TIME (ISO; for reproducible output)")
    common.add_argument("--codec", choices=("json", "pickle"), default=argparse.SUPPRESS,
                        help="how the store's values are encoded (default json)")
    parser = _Parser(prog="python -m durably", parents=[common],
                     description="See, repair, move and clean a durably store.")
    commands: Any = parser.add_subparsers(dest="name", metavar="COMMAND",
                                          parser_class=_Parser)
    commands.required = True

    def command(name: str, run: Callable[[Session], int], text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, parents=[common], help=text,
                                                           description=text)
        sub.set_defaults(run=run)
        return sub

    sub = command("runs", cmd_runs, "list runs (the latest --limit, in creation order)")
    sub.add_argument("--status", choices=[s.value for s in RunStatus])
    sub.add_argument("--workflow", metavar="W")
    sub.add_argument("--since", metavar="T", help="updated since T (a duration or ISO time)")
    sub.add_argument("--stale", action="store_true", help="RUNNING past their lease only")
    sub.add_argument("--limit", type=int, default=100, metavar="N", help="0: all")
    sub = command("show", cmd_show, "one run: record, steps, inbox, published values")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub = command("steps", cmd_steps, "steps outside runs")
    sub.add_argument("--workflow", metavar="W")
    sub.add_argument("--status", choices=[s.value for s in StepStatus])
    sub = command("step", cmd_step, "one step by its full id, decoded")
    sub.add_argument("step_id", metavar="STEP_ID")
    for name, run, text in (
            ("cancel", cmd_cancel, "cancel a run, or a selection of runs"),
            ("resume", cmd_resume, "resume a FAILED or CANCELLED run, or a selection"),
            ("delete", cmd_delete, "delete a run, or a selection, with steps and inbox")):
        sub = command(name, run, text)
        sub.add_argument("run_id", nargs="?", metavar="RUN_ID")
        sub.add_argument("--status", choices=[s.value for s in RunStatus])
        sub.add_argument("--workflow", metavar="W")
        sub.add_argument("--older-than", metavar="D", help="not updated for D (e.g. 30d)")
        sub.add_argument("--dry-run", action="store_true", help="list what would change")
    sub = command("fork", cmd_fork, "a new run that executes again from a step")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--from", dest="from_step", required=True, metavar="STEP",
                     help="a step id, a local id, Action.name#k or last-failure")
    sub.add_argument("--new-id", metavar="ID")
    sub = command("send-event", cmd_send_event, "send an event to a run")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("data", metavar="JSON")
    sub.add_argument("--key", metavar="K", help="an idempotency key")
    sub = command("export", cmd_export, "the store, or some runs, as JSON Lines")
    sub.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    sub.add_argument("--status", choices=[s.value for s in RunStatus])
    sub.add_argument("--workflow", metavar="W")
    sub.add_argument("--decode", action="store_true", help="add readable *_decoded fields")
    sub.add_argument("--redact", action="store_true",
                     help="blank inputs, results and payloads")
    sub.add_argument("-o", "--output", metavar="FILE", help="write here, not to stdout")
    sub = command("import", cmd_import, "import an export (the store is created if missing)")
    sub.add_argument("file", metavar="FILE", help="an export file, or - for stdin")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run one command; return its exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args = _parser().parse_args(argv)
    args.db, args.url = getattr(args, "db", None), getattr(args, "url", None)
    if (args.db is None) == (args.url is None):
        err.write("durably: give the store: --db PATH (SQLite) or --url URL (PostgreSQL)\n")
        return USAGE
    args.schema = getattr(args, "schema", "durably")
    args.now = getattr(args, "now", None)
    args.codec = getattr(args, "codec", "json")
    session: Session | None = None
    try:
        session = Session(args, out, err)
        code: int = args.run(session)
        return code
    except CommandError as error:
        return _fail(err, error.code, str(error))
    except (RunNotFoundError, StepNotFoundError) as error:
        return _fail(err, NOT_FOUND, str(error))
    except (RunClosedError, RunConflictError) as error:
        return _fail(err, WRONG_STATE, str(error))
    except ConfigurationError as error:
        return _fail(err, USAGE, str(error))
    except StorageError as error:
        return _fail(err, NOT_FOUND, str(error))
    except DurableError as error:
        return _fail(err, USAGE, f"{type(error).__name__}: {error}")
    except ImportError as error:  # --url without the postgres extra
        return _fail(err, USAGE, str(error))
    except BrokenPipeError:  # `... | head`: the reader left; not an error of ours
        return OK
    finally:
        if session is not None:
            session.close()


def _fail(err: TextIO, code: int, message: str) -> int:
    err.write(f"durably: {clip(message, 2000)}\n")
    return code
