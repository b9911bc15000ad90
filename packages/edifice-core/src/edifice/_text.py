"""Small text helpers shared by error messages (close matches, enumerations)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``word`` (for "did you mean" hints).

    Comparison ignores case, and a choice equal to ``word`` but for case comes first: ``Mamba`` suggests ``mamba``
    before ``zamba`` and ``samba``, which a case-sensitive ratio ranks higher.
    """
    by_folded: dict[str, list[str]] = {}
    for choice in choices:
        by_folded.setdefault(choice.casefold(), []).append(choice)
    folded = word.casefold()
    ranked = ([folded] if folded in by_folded else []) + difflib.get_close_matches(folded, list(by_folded), n=n)
    found = dict.fromkeys(choice for key in ranked for choice in by_folded[key])  # ordered, without repeats
    return list(found)[:n]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` when a close match exists, else an empty string."""
    matches = close_matches(word, choices)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
