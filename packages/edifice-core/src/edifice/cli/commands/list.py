"""``edifice list``: the installed architectures, one line each (torch-free)."""

from __future__ import annotations

import argparse
from typing import Any

from edifice._text import did_you_mean
from edifice.catalogue import catalogue
from edifice.cli.commands import Command, UsageError
from edifice.cli.output import table, terminal_width, to_json
from edifice.registry import families, get_spec, list_architectures, why_absent
from edifice.spec import ArchSpec

__all__ = ["COMMAND", "flag_summary"]

# Short words for the flags a reader scans for; compile_fullgraph is shown only when it is off.
_FLAG_WORDS = {
    "causal": "causal",
    "stateful": "stateful",
    "variable_length": "varlen",
    "batch_coupled": "batch-coupled",
    "stochastic": "stochastic",
    "stochastic_eval": "stochastic-eval",
    "needs_fit": "needs-fit",
    "needs_cuda": "cuda-only",
}


def flag_summary(spec: ArchSpec) -> str:
    """The set flags as comma-separated short words (``causal,stateful,varlen``), or ``-``."""
    words = [word for flag, word in _FLAG_WORDS.items() if getattr(spec, flag)]
    if not spec.compile_fullgraph:
        words.append("no-fullgraph")
    return ",".join(words) or "-"


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", metavar="F", help="only architectures of family F")
    parser.add_argument("--pattern", metavar="GLOB", help="only names matching GLOB, e.g. 'mamba*'")
    parser.add_argument("--wide", action="store_true", help="print whole summaries, however wide the terminal")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _check_family(family: str) -> None:
    if family in families():
        return
    planned = {entry.family: entry.distribution for entry in catalogue().values()}
    if family in planned:
        raise UsageError(f"no installed architecture belongs to family {family!r}: {why_absent(planned[family])}")
    raise UsageError(
        f"unknown family {family!r}. Installed families: {', '.join(families()) or 'none'}."
        + did_you_mean(family, {*families(), *planned})
    )


def _entry(spec: ArchSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "family": spec.family,
        "distribution": spec.distribution,
        "summary": spec.summary,
        "alias_of": spec.alias_of,
        "flags": spec.flags,
    }


def _run(args: argparse.Namespace) -> int:
    if args.family is not None:
        _check_family(args.family)
    specs = [get_spec(name) for name in list_architectures(family=args.family, pattern=args.pattern)]
    if args.json:
        print(to_json([_entry(spec) for spec in specs]))
        return 0
    rows = [(s.name, s.family, s.distribution, flag_summary(s), s.summary) for s in specs]
    width = None if args.wide else terminal_width()
    print(table(("NAME", "FAMILY", "DISTRIBUTION", "FLAGS", "SUMMARY"), rows, width=width))
    return 0


COMMAND = Command("list", "list the installed architectures", _configure, _run)
