"""Plain-text tables and stable JSON for the CLI (torch-free)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["fmt_count", "fmt_shape", "key_values", "section", "table", "terminal_width", "to_json"]

#: The last column of a fitted table keeps at least this many characters, however narrow the terminal.
_MIN_LAST_COLUMN = 16


def terminal_width() -> int | None:
    """The width to fit tables to: ``$COLUMNS`` if set, else the terminal's; ``None`` when output is not a terminal.

    Piped output (``edifice list | grep ssm``) keeps every line whole, as ``ls`` and ``git`` do.
    """
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    right: Iterable[int] = (),
    indent: str = "",
    width: int | None = None,
) -> str:
    """Align ``rows`` under ``headers`` in columns two spaces apart; columns in ``right`` are right-aligned.

    With ``width``, cells of the last column are shortened (ending in ``…``) so that lines fit in ``width``.
    """
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if width is not None:
        room = width - len(indent) - sum(widths[:-1]) - 2 * (len(widths) - 1)
        widths[-1] = min(widths[-1], max(room, _MIN_LAST_COLUMN))
        for row in cells:
            if len(row[-1]) > widths[-1]:
                row[-1] = row[-1][: widths[-1] - 1].rstrip() + "…"
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
