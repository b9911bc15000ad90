"""Fair sizes: which architectures may enter an arena, and the width that brings each to a common parameter count.

Every entry keeps its own defaults (and any per-entry overrides of the suite) except its width ``d_model``, which is
searched so that the parameter count lands within ``tolerance`` (10%) of the target. Counting builds the model on the
meta device (no memory, no initialisation), and counts each shared (tied) parameter once. The count is assumed to grow
with the width; widths the configuration rejects (a head size that does not divide it) are stepped over.

An entry that cannot enter is *skipped with its reason* -- not installed, not a causal token model, needs CUDA, or no
width within the tolerance -- so that one unsuitable name never stops a whole arena.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import edifice
from edifice.errors import ConfigError, EdificeError

__all__ = ["WIDTH", "Entry", "Skip", "count_parameters", "eligibility", "size_entry"]

#: The config field scaled to match parameter counts (every sequence backbone has it).
WIDTH = "d_model"


@dataclasses.dataclass(frozen=True)
class Entry:
    """An architecture sized for the arena: its config overrides and the parameter count they give."""

    arch: str
    overrides: Mapping[str, Any]
    """Every field the arena sets on top of the architecture's defaults (the width included)."""
    parameters: int
    target: int

    @property
    def width(self) -> int:
        """The chosen ``d_model``."""
        return int(self.overrides[WIDTH])

    @property
    def deviation(self) -> float:
        """Relative distance of the parameter count from the target (``+0.04`` is 4% above)."""
        return self.parameters / self.target - 1.0


@dataclasses.dataclass(frozen=True)
class Skip:
    """An architecture left out of the arena, and why."""

    arch: str
    reason: str


def eligibility(name: str, *, device: str = "cpu") -> str | None:
    """Why ``name`` cannot enter an arena on ``device`` (``None`` when it can): it must be a causal token model."""
    try:
        spec = edifice.get_spec(name)
    except EdificeError as exc:  # not registered: the message names close matches or the install line
        return str(exc)
    if spec.layout != "batch" or "input_ids" not in spec.inputs or "logits" not in spec.outputs:
        return f"not a token sequence model (a {spec.family} architecture without input_ids -> logits)"
    if not spec.causal:
        return "not causal: the arena's tasks predict each position from the positions before it"
    if spec.needs_fit:
        return "needs a data-dependent prepare() step before training, which the arena does not run"
    if spec.needs_cuda and not device.startswith("cuda"):
        return f"needs CUDA ({spec.reasons.get('needs_cuda', 'no CPU path')}); run with --device cuda"
    return None


def count_parameters(name: str, overrides: Mapping[str, Any]) -> int:
    """Parameters of ``name`` built with ``overrides`` on the meta device (shared parameters counted once)."""
    model = edifice.build(name, device="meta", **overrides)
    return sum(p.numel() for p in model.parameters())


def size_entry(
    name: str,
    target: int,
    base: Mapping[str, Any],
    *,
    tolerance: float = 0.10,
    multiple: int = 4,
    max_width: int = 8192,
) -> Entry | Skip:
    """Size ``name``: the ``d_model`` (a multiple of ``multiple``) whose count is closest to ``target``, on ``base``.

    Returns a :class:`Skip` with the reason when the architecture has no width field, fails to build, or no width
    comes within ``tolerance`` of the target.
    """
    if WIDTH not in edifice.config(name).field_names():
        return Skip(name, f"has no {WIDTH} field to scale")
    counts: dict[int, int | None] = {}

    def count(width: int) -> int | None:
        if width not in counts:
            try:
                counts[width] = count_parameters(name, {**base, WIDTH: width})
            except ConfigError:
                counts[width] = None  # a width this configuration rejects (heads must tile it, ...)
        return counts[width]

    try:
        below, above = _bracket(count, target, multiple, max_width)
    except EdificeError as exc:  # a missing block, an option the architecture does not take
        return Skip(name, f"cannot be built: {exc}")
    candidates = [w for w in (below, above) if w is not None]
    if not candidates:
        return Skip(name, f"no {WIDTH} (multiple of {multiple} up to {max_width}) gives a valid configuration")
    best = min(candidates, key=lambda w: abs(_counted(count, w) - target))
    entry = Entry(name, {**base, WIDTH: best}, _counted(count, best), target)
    if abs(entry.deviation) > tolerance:
        nearest = ", ".join(f"{WIDTH}={w}: {_counted(count, w):,}" for w in candidates)
        return Skip(name, f"no width within {tolerance:.0%} of {target:,} parameters (nearest {nearest})")
    return entry


def _counted(count: Callable[[int], int | None], width: int) -> int:
    value = count(width)
    assert value is not None  # only valid widths are candidates
    return value


def _bracket(
    count: Callable[[int], int | None], target: int, multiple: int, max_width: int
) -> tuple[int | None, int | None]:
    """The largest valid width counting below ``target`` and the smallest counting at or above it (by bisection)."""
    widths = range(multiple, max_width + 1, multiple)

    def valid_from(index: int, stop: int) -> int | None:
        # The first index in [index, stop) whose width builds; None if none does.
        for i in range(index, stop):
            if count(widths[i]) is not None:
                return i
        return None

    lo, hi = -1, len(widths)  # invariant: count(widths[lo]) < target <= count(widths[hi]) (valid ends, or sentinels)
    while hi - lo > 1:
        mid = valid_from((lo + hi) // 2, hi)
        if mid is None:  # nothing valid between the midpoint and hi: look below the midpoint
            mid = valid_from(lo + 1, (lo + hi) // 2)
            if mid is None:
                break
        value = count(widths[mid])
        assert value is not None
        if value < target:
            lo = mid
        else:
            hi = mid
    below = widths[lo] if lo >= 0 else None
    above = widths[hi] if hi < len(widths) else None
    return below, above
