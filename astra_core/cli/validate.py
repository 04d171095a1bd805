"""``astra validate``: check a run file and print its resolved config, building nothing heavy.

With ``--check`` it also builds the run's components and holds each to its contract with the
conformance kit (`astra_core.testing`), as a plugin author's own tests would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astra_core.cli.common import build, file_output_dir, resolve, run_config
from astra_core.errors import AstraError

if TYPE_CHECKING:
    from astra_core.build import ResolvedRun


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("validate", help="check a run file and print its resolved config")
    parser.add_argument("run_file", metavar="RUN.toml", help="the run file to check")
    parser.add_argument(
        "--check",
        action="store_true",
        help="also build the components and run the conformance kit on them (loads the models)",
    )
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
    if args.check:
        for line in conformance(resolved, source):
            print(line, file=sys.stderr)
    print(f"{source}: valid", file=sys.stderr)
    return 0


def conformance(resolved: ResolvedRun, source: str) -> list[str]:
    """Run the conformance kit on the components `resolved` names; one line per passed check.

    A broken contract is an `AstraError` naming the component, the plugin and the contract.
    """
    from astra_core import testing
    from astra_core.turns import Turn

    parts = resolved.components
    built = build(resolved, source, with_evaluator=False)
    passed: list[str] = []

    def held(kind: str, check: Any, *args: Any) -> Any:
        info = parts[kind].info
        try:
            result = check(*args)
        except testing.ConformanceError as error:
            raise AstraError(f"{kind} {info.name!r} (plugin {info.provider}): {error}") from None
        passed.append(f"check: {kind} {info.name!r} (plugin {info.provider}) holds its contract")
        return result

    graphs = held("sampler", testing.check_sampler, built.sampler)
    turns = [Turn(node.context, node.probe, node.response) for graph in graphs for node in graph.nodes()]
    held("scorer", testing.check_scorer, built.scorer, turns)
    held("system", testing.check_system, built.system, [t.context for t in turns], [t.probe for t in turns])
    held("algorithm", testing.check_algorithm, built.algorithm, built.sampler)
    optimizer = parts["optimizer"]
    held("optimizer", testing.check_optimizer, optimizer.info.name, optimizer.options.model_dump())
    return passed
