"""``edifice info NAME``: everything the registry knows about one architecture (torch-free)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from edifice.cli.commands import Command
from edifice.cli.output import fmt_shape, key_values, section, table, to_json
from edifice.registry import ArchInfo, info
from edifice.spec import ArchSpec, TensorSpec

__all__ = ["COMMAND", "render"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="registry name of the architecture")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _run(args: argparse.Namespace) -> int:
    described = info(args.name)
    if args.json:
        spec = described.spec
        print(to_json({**described.to_dict(), "paper_link": spec.paper.link if spec.paper else None}))
    else:
        print(render(described))
    return 0


def render(described: ArchInfo) -> str:
    """The text ``edifice info`` prints."""
    spec = described.spec
    plugin = f" (plugin {described.plugin!r})" if described.plugin else ""
    requires = [f"blocks {', '.join(spec.requires_blocks)}"] if spec.requires_blocks else []
    requires += [f"architectures {', '.join(spec.requires_archs)}"] if spec.requires_archs else []
    header = key_values(
        [
            ("family", spec.family),
            ("distribution", spec.distribution + plugin),
            ("paper", str(spec.paper) if spec.paper else None),
            ("verification", spec.verification or None),
            ("alias of", spec.alias_of),
            ("requires", "; ".join(requires) or None),
            ("interop", ", ".join(spec.interop) or None),
            ("model", spec.model),
            ("config", spec.config),
            ("layout", spec.layout),
        ]
    )
    parts = [f"{spec.name}: {spec.summary}\n", header, section("flags", _flags(spec))]
    if spec.grad_exempt:
        exempt = table(("PARAMETER", "REASON"), sorted(spec.grad_exempt.items()), indent="  ")
        parts.append(section("gradient exemptions", exempt))
    parts.append(section("inputs", _tensors(spec.inputs)))
    parts.append(section("outputs", _tensors(spec.outputs)))
    fields = [
        (f.name, f.type, repr(f.default) + (" (fixed)" if f.name in spec.fixed else ""), f.doc)
        for f in described.fields
    ]
    parts.append(section("config fields", table(("FIELD", "TYPE", "DEFAULT", "DESCRIPTION"), fields, indent="  ")))
    return "\n".join(parts)


def _flags(spec: ArchSpec) -> str:
    rows = []
    for flag, value in spec.flags.items():
        # A switched-off compile_fullgraph weakens a check, so its reason is filed under "no_compile_fullgraph".
        key = "no_compile_fullgraph" if flag == "compile_fullgraph" and not value else flag
        rows.append((flag, value, spec.reasons.get(key)))
    return table(("FLAG", "SET", "REASON"), rows, indent="  ")


def _tensors(specs: Mapping[str, TensorSpec]) -> str:
    rows = []
    for name, ts in specs.items():
        notes = [
            note for note in ("optional" if ts.optional else "", f"when {ts.when}" if ts.when else "", ts.doc) if note
        ]
        rows.append((name, fmt_shape(ts.shape), ts.dtype, ts.domain, "; ".join(notes) or None))
    return table(("NAME", "SHAPE", "DTYPE", "DOMAIN", "NOTES"), rows, indent="  ")


COMMAND = Command("info", "describe one architecture: paper, flags, tensors and config fields", _configure, _run)
