"""``astra validate``: check a run file and print its resolved config, building nothing heavy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from astra_core.cli.common import file_output_dir, resolve, run_config


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("validate", help="check a run file and print its resolved config")
    parser.add_argument("run_file", metavar="RUN.toml", help="the run file to check")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from astra_core.config import read_run_file

    path = Path(args.run_file)
    source = str(path)
    data = read_run_file(path)
    # `astra train` gives every run a directory, so a file may set checkpoint_every without one.
    overrides = {} if file_output_dir(data) else {"output_dir": "runs/<timestamp>"}
    resolved = resolve(run_config(data, source, overrides), source)
    print(json.dumps(resolved.describe(), indent=2))
    print(f"{source}: valid", file=sys.stderr)
    return 0
