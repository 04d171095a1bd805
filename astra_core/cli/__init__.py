"""The ``astra`` command line: ``plugins``, ``validate``, ``train``, ``evaluate`` and ``report``.

One module per command, each with ``add_parser(commands)`` and ``run(args)``; `common` holds what
they share. Every user mistake (an `AstraError` or a usage error) becomes one line on stderr,
``astra: error: <message>``, and exit code 2; never a traceback. The package imports only the
standard library and the light core at start-up, so ``astra --help`` and ``astra plugins`` stay
fast: torch and the plugins' heavy dependencies load inside the commands that build components.

>>> main(["--version"])  # doctest: +SKIP
astra 0.1.0
0
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from astra_core.cli import evaluate, plugins, report, train, validate
from astra_core.cli.common import PROG, Parser, UsageError, print_error
from astra_core.errors import AstraError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``astra`` command line with `argv` (default: ``sys.argv[1:]``); return the exit code.

    User mistakes print ``astra: error: <one line>`` on stderr and return 2. An interrupted
    training run returns 0 (SIGINT) or 143 (SIGTERM) after checkpointing.
    """
    parser = _parser()
    warnings = _warnings_to_stderr()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        code: int = args.handler(args)
        return code
    except SystemExit as stop:  # --help and --version
        return stop.code if isinstance(stop.code, int) else 0
    except AstraError as error:
        print_error(str(error))
        return 2
    except KeyboardInterrupt:
        print_error("interrupted (a second Ctrl-C stops at once, without a checkpoint)")
        return 130
    finally:
        logging.getLogger("astra_core").removeHandler(warnings)
        _leave_process_group()


def _warnings_to_stderr() -> logging.Handler:
    """The core's warnings (a skipped checkpoint, a signal received) as ``warning: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logging.getLogger("astra_core").addHandler(handler)
    return handler


def _leave_process_group() -> None:
    # A rank that exits with gloo still running aborts ("terminate called without an active exception").
    if "astra_core.distributed" not in sys.modules:
        return
    from astra_core import distributed

    if distributed.is_initialized():
        distributed.destroy()


def _parser() -> Parser:
    from astra_core import __version__

    parser = Parser(
        prog=PROG,
        description="Adaptive stress testing of language models with reinforcement learning.",
        epilog="Run `astra COMMAND --help` for a command's options; docs/cli.md has examples.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (plugins, validate, train, evaluate, report):
        command.add_parser(commands)
    return parser


__all__ = ["UsageError", "main"]
