"""Plain-text tables and stable JSON for the CLI (torch-free)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["fmt_count", "fmt_shape", "key_values", "section", "table", "to_json"]


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = (), indent: str = "") -> str:
    """Align ``rows`` under ``headers`` in columns two spaces apart; columns in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right_aligned = set(right)
    lines = []
    for row in cells:
        parts = [
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(indent + "  ".join(parts).rstrip())
    return "\n".join(lines)


def key_values(pairs: Iterable[tuple[str, Any]], *, indent: str = "  ") -> str:
    """Align ``key  value`` lines (a two-column table without headers)."""
    items = [(key, _cell(value)) for key, value in pairs]
    width = max((len(key) for key, _ in items), default=0)
    return "\n".join(f"{indent}{key.ljust(width)}  {value}".rstrip() for key, value in items)


def section(title: str, body: str) -> str:
    """A titled block: the title on its own line, then ``body``."""
    return f"\n{title}\n{body}"


def to_json(value: Any) -> str:
    """Stable JSON: sorted keys, two-space indent, non-JSON values written with ``str``."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def fmt_shape(shape: Iterable[Any]) -> str:
    """``[B, T, 64]`` style."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def fmt_count(n: int | None) -> str:
    """``1,234,567 (1.23M)``: exact with thousands separators, plus an SI short form above 1000."""
    if n is None:
        return "n/a"
    exact = f"{n:,}"
    for scale, prefix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= scale:
            return f"{exact} ({n / scale:.3g}{prefix})"
    return exact


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    # Tables hold one line per row: a multi-line value (an error message) is folded.
    return " ".join(str(value).split())
