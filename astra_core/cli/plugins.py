"""``astra plugins``: list plugins and every component they register."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("plugins", help="list plugins and every component they register")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from astra_core import plugins as plugin_manager

    loaded = plugin_manager.load_plugins()
    plugin_rows = [
        {"name": p.name, "distribution": p.distribution, "version": p.version, "status": p.status, "error": p.error}
        for p in loaded.plugins
    ]
    components: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    for registry in loaded.registries:
        clashing = registry.conflicts()
        for info in registry:
            components.append(
                {
                    "kind": info.kind,
                    "name": info.name,
                    "aliases": list(info.aliases),
                    "provider": str(info.provider),
                    "plugin": info.provider.plugin,
                    "distribution": info.provider.distribution,
                    "version": info.provider.version,
                    "summary": info.summary.splitlines()[0] if info.summary else "",
                    "conflict": any(n in clashing for n in (info.name, *info.aliases)),
                }
            )
        for name, infos in sorted(clashing.items()):
            conflicts.append({"kind": registry.kind, "name": name, "providers": [str(i.provider) for i in infos]})
    if args.json:
        print(json.dumps({"plugins": plugin_rows, "components": components, "conflicts": conflicts}, indent=2))
        return 0

    print("plugins:")
    width = max((len(str(p["name"])) for p in plugin_rows), default=4)
    for p in plugin_rows:
        state = "loaded" if p["status"] == "loaded" else str(p["status"]).upper()
        error = f": {p['error']}" if p["error"] else ""
        print(f"  {p['name']!s:<{width}}  {p['distribution']} {p['version']}  {state}{error}")
    name_width = max((len(c["name"]) for c in components), default=4)
    kind = None
    for c in components:
        if c["kind"] != kind:
            kind = c["kind"]
            print(f"{kind}s:")
        aliases = f" (aliases: {', '.join(c['aliases'])})" if c["aliases"] else ""
        flag = "  CONFLICT" if c["conflict"] else ""
        print(f"  {c['name']:<{name_width}}  {c['provider']}{flag}  {c['summary']}{aliases}")
    if conflicts:
        print("conflicts (a name registered by more than one plugin; disable one with ASTRA_DISABLE_PLUGINS):")
        for conflict in conflicts:
            print(f"  {conflict['kind']} {conflict['name']!r}: {' and '.join(conflict['providers'])}")
    broken = [p for p in plugin_rows if p["status"] == "broken"]
    if broken:
        print(f"{len(broken)} plugin(s) failed to load; set ASTRA_DEBUG_PLUGINS=1 for their tracebacks")
    return 0
