"""The entry points: ``ditcache`` (``python -m ditcache``) and ``export-engines``, and the one error handler."""

from __future__ import annotations

import os
import sys

from .parser import build_parser

# every error a user's input can cause, and nothing else: ScheduleError, PlanError, WeightsError, CorrectionsError,
# ManifestError and the argument checks are ValueErrors; BackendUnavailable, EngineIncompatible, ValidationError
# and the distributed checks are RuntimeErrors; OSError: files that vanish or cannot be written mid-run
USER_ERRORS = (ValueError, OSError, NotImplementedError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user error prints ``ditcache <command>: error: ...`` and returns 2 (no traceback).

    Bad arguments stop in the parser (argparse prints the usage and the problem, exit 2) before any work.
    """
    args = build_parser().parse_args(argv)
    code = _run(args)
    if getattr(args, "exit_without_teardown", False) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_teardown(code)
    return code


def _run(args) -> int:
    """The subcommand's exit code; a user error is printed (no traceback) and gives 2."""
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if os.environ.get("DITCACHE_TRACEBACK"):
            raise
        hint = "" if isinstance(exc, (ValueError, OSError)) else " (DITCACHE_TRACEBACK=1 shows where it came from)"
        print(f"ditcache {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 2


def _exit_without_teardown(code: int) -> None:
    """End a torchrun rank now, its output flushed and every file closed, skipping the interpreter's teardown.

    gloo's C++ threads outlive ``destroy_process_group`` and, about one run in eight on a 2-core machine, abort the
    process in its static destructors after all Python code is done ("terminate called without an active
    exception", SIGABRT, no Python frame): torchrun then reports the finished job as failed. Everything a rank
    writes is written atomically and closed before this point, so nothing is lost by skipping the teardown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def export_engines_main(argv: list[str] | None = None) -> int:
    """The ``export-engines`` alias: ``ditcache export-engines``."""
    return main(["export-engines", *(sys.argv[1:] if argv is None else argv)])
