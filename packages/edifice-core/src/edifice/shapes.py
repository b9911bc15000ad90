"""Safe evaluation of the small expressions used in tensor specs (torch-free).

A shape dimension is an ``int`` or a string: a symbol (``B``, ``T``, ``N``, ...), a config field (``d_model``), an
integer expression (``d_model * 2``, ``T + 1``) or a conditional (``T if output == 'all' else None``). A dimension
that evaluates to ``None`` is dropped. Only names, constants, arithmetic, comparisons, ``and``/``or``/``not`` and
conditional expressions are allowed; anything else is rejected when the expression is parsed.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Domain", "evaluate", "names_in", "parse_domain"]

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


@functools.lru_cache(maxsize=4096)
def _parse(expr: str) -> ast.expr:
    tree = ast.parse(expr, mode="eval").body
    for node in ast.walk(tree):
        allowed = (
            ast.Name,
            ast.Constant,
            ast.BinOp,
            ast.UnaryOp,
            ast.Compare,
            ast.BoolOp,
            ast.IfExp,
            ast.Tuple,
            ast.Load,
            ast.USub,
            ast.Not,
            ast.And,
            ast.Or,
            *_BINOPS,
            *_CMPOPS,
        )
        if not isinstance(node, allowed):
            raise ValueError(f"expression {expr!r}: {type(node).__name__} is not allowed in a spec expression")
    return tree


def names_in(expr: str | int) -> frozenset[str]:
    """Return the names an expression refers to (empty for integers)."""
    if isinstance(expr, int):
        return frozenset()
    return _names(expr)


@functools.lru_cache(maxsize=4096)
def _names(expr: str) -> frozenset[str]:
    # Cached: input validation asks this of every dimension at every forward call.
    return frozenset(n.id for n in ast.walk(_parse(expr)) if isinstance(n, ast.Name))


def evaluate(expr: str | int, env: Mapping[str, Any]) -> Any:
    """Evaluate a spec expression with names bound from ``env``; raises ``NameError`` for an unbound name."""
    if isinstance(expr, int):
        return expr
    return _eval(_parse(expr), env)


def _eval(node: ast.expr, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in ("None", "True", "False"):
            return {"None": None, "True": True, "False": False}[node.id]
        if node.id not in env:
            raise NameError(node.id)
        return env[node.id]
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, env)
        return -value if isinstance(node.op, ast.USub) else not value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, env)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result: Any = True
            for v in node.values:
                result = _eval(v, env)
                if not result:
                    return result
            return result
        result = False
        for v in node.values:
            result = _eval(v, env)
            if result:
                return result
        return result
    if isinstance(node, ast.IfExp):
        return _eval(node.body, env) if _eval(node.test, env) else _eval(node.orelse, env)
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, env) for e in node.elts)
    raise ValueError(f"unsupported expression node {type(node).__name__}")  # pragma: no cover - _parse rejects it


_DOMAIN = re.compile(
    r"^(?P<kind>float|int|bool)(?:(?P<lo_br>\[)\s*(?P<lo>[^,]+?)\s*,\s*(?P<hi>[^\])]+?)\s*(?P<hi_br>[\])]))?$"
)


class Domain:
    """A parsed value domain such as ``float``, ``bool``, ``float[0, 1]`` or ``int[0, vocab_size)``."""

    def __init__(self, kind: str, low: str | None, high: str | None, high_inclusive: bool) -> None:
        self.kind = kind
        self.low = low
        self.high = high
        self.high_inclusive = high_inclusive

    def bounds(self, env: Mapping[str, Any]) -> tuple[Any, Any]:
        """Evaluate the bounds against ``env`` (``None`` where unbounded)."""
        low = evaluate(self.low, env) if self.low is not None else None
        high = evaluate(self.high, env) if self.high is not None else None
        return low, high

    def describe(self, env: Mapping[str, Any]) -> str:
        """Human-readable form with bounds evaluated, e.g. ``[0, 256) (vocab_size=256)``."""
        if self.low is None:
            return self.kind
        low, high = self.bounds(env)
        fields = sorted((names_in(self.low) | names_in(self.high or "0")) & set(env))
        note = f" ({', '.join(f'{f}={env[f]}' for f in fields)})" if fields else ""
        return f"[{low}, {high}{']' if self.high_inclusive else ')'}{note}"


@functools.lru_cache(maxsize=1024)
def parse_domain(text: str) -> Domain:
    """Parse a domain string; raises ``ValueError`` when malformed."""
    m = _DOMAIN.match(text.strip())
    if not m:
        raise ValueError(f"malformed value domain {text!r}")
    return Domain(m["kind"], m["lo"], m["hi"], m["hi_br"] == "]")
