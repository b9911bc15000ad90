"""Spec expressions: evaluation, safety and value domains."""

from __future__ import annotations

import pytest

from edifice.shapes import evaluate, names_in, parse_domain


@pytest.mark.parametrize(
    ("expr", "env", "expected"),
    [
        (7, {}, 7),
        ("d_model", {"d_model": 64}, 64),
        ("d_model * 2 + 1", {"d_model": 4}, 9),
        ("T // 2 - 1", {"T": 8}, 3),
        ("T % 3", {"T": 8}, 2),
        ("2 ** k", {"k": 3}, 8),
        ("-T", {"T": 2}, -2),
        ("T if output == 'all' else None", {"T": 5, "output": "all"}, 5),
        ("T if output == 'all' else None", {"T": 5, "output": "last"}, None),
        ("vocab_size is None", {"vocab_size": None}, True),
        ("vocab_size is not None and vocab_size > 3", {"vocab_size": 4}, True),
        ("a or b", {"a": 0, "b": 2}, 2),
        ("a or b", {"a": 0, "b": 0}, 0),
        ("a and b", {"a": 0, "b": 2}, 0),
        ("not a", {"a": False}, True),
        ("1 < x <= 3", {"x": 3}, True),
        ("1 < x <= 3", {"x": 4}, False),
        ("mode in ('a', 'b')", {"mode": "b"}, True),
        ("mode not in ('a', 'b')", {"mode": "b"}, False),
        ("x != 1", {"x": 2}, True),
        ("x >= 1 and x < 2", {"x": 1}, True),
        ("True", {}, True),
    ],
)
def test_evaluate(expr: str | int, env: dict, expected: object) -> None:
    assert evaluate(expr, env) == expected


def test_unbound_name_and_forbidden_nodes() -> None:
    with pytest.raises(NameError):
        evaluate("T + 1", {})
    for bad in ("__import__('os')", "x.y", "x[0]", "lambda: 1"):
        with pytest.raises(ValueError, match="not allowed"):
            evaluate(bad, {"x": 1})


def test_names_in() -> None:
    assert names_in("d_model * T") == {"d_model", "T"}
    assert names_in(3) == frozenset()


def test_domains() -> None:
    d = parse_domain("int[0, vocab_size)")
    assert d.kind == "int" and d.bounds({"vocab_size": 10}) == (0, 10)
    assert d.describe({"vocab_size": 10}) == "[0, 10) (vocab_size=10)"
    f = parse_domain("float[0, 1]")
    assert f.high_inclusive and f.describe({}) == "[0, 1]"
    assert parse_domain("float").describe({}) == "float"
    with pytest.raises(ValueError, match="malformed"):
        parse_domain("complex")
