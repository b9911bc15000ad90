"""ArchSpec and friends validate themselves and stay pure data."""

from __future__ import annotations

from typing import Any

import pytest

from edifice import ArchSpec, BlockSpec, Converter, OpOverride, Paper, PluginError, TensorSpec


def _spec(**kw: Any) -> ArchSpec:
    base: dict[str, Any] = {
        "name": "toy",
        "family": "toys",
        "distribution": "edifice-toys",
        "summary": "Toy.",
        "paper": None,
        "config": "pkg.configs.toy:ToyConfig",
        "model": "pkg.toy:Toy",
        "inputs": {"x": TensorSpec(("B", "T", "d_model"))},
        "outputs": {"y": TensorSpec(("B", "T", "d_model"))},
    }
    base.update(kw)
    return ArchSpec(**base)


def test_valid_spec_round_trips_to_dict() -> None:
    spec = _spec(fixed=["mode"], defaults={"mode": "a"}, interop=["x"])
    assert spec.fixed == ("mode",) and spec.interop == ("x",)
    data = spec.to_dict()
    assert data["inputs"]["x"]["shape"] == ["B", "T", "d_model"]
    assert spec.flags["compile_fullgraph"] is True and spec.weakened_checks() == []


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"name": "Bad-Name"}, "lower_snake_case"),
        ({"model": "not an import"}, "model must be an import string"),
        ({"outputs": {}}, "outputs must name at least one tensor"),
        ({"verification": "vibes"}, "verification must start with"),
        ({"batch_coupled": True}, "flag 'batch_coupled' weakens a contract check"),
        ({"compile_fullgraph": False}, "'no_compile_fullgraph'"),
        ({"grad_exempt": {"x.*": ""}}, "grad_exempt['x.*'] needs a reason"),
        ({"stateful": True}, "must be causal"),
        ({"fixed": ("mode",)}, "fixed field 'mode' needs its value in defaults"),
    ],
)
def test_invalid_specs_are_rejected(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PluginError, match="invalid ArchSpec") as info:
        _spec(**overrides)
    assert fragment in str(info.value)


def test_weakening_flags_with_reasons() -> None:
    spec = _spec(
        batch_coupled=True, compile_fullgraph=False, reasons={"batch_coupled": "BN", "no_compile_fullgraph": "x"}
    )
    assert spec.weakened_checks() == ["batch_coupled", "no_compile_fullgraph"]


def test_tensor_spec_validation() -> None:
    with pytest.raises(PluginError, match="dtype 'float8'"):
        TensorSpec(("B",), dtype="float8")
    with pytest.raises(PluginError, match="domain 'ints'"):
        TensorSpec(("B",), domain="ints")
    assert TensorSpec(["B", 3]).shape == ("B", 3)  # type: ignore[arg-type]


def test_paper_link_and_str() -> None:
    paper = Paper("Attention Is All You Need", "Vaswani et al.", 2017, arxiv="1706.03762")
    assert paper.link == "https://arxiv.org/abs/1706.03762"
    assert str(paper).endswith("https://arxiv.org/abs/1706.03762")
    assert Paper("T", "A", 2000, url="https://x").link == "https://x"
    assert str(Paper("T", "A", 2000)) == "A (2000). T."


def test_extension_specs_validate_import_strings() -> None:
    assert BlockSpec("b", "a.b:C").target == "a.b:C"
    with pytest.raises(PluginError, match="block 'b'"):
        BlockSpec("b", "nope")
    assert OpOverride("sdpa", "k", "a.b:c", "cuda", dtypes=["float32"]).dtypes == ("float32",)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="probe must be an import string"):
        OpOverride("sdpa", "k", "a.b:c", "cuda", probe="bad")
    with pytest.raises(PluginError, match="converter 'c'"):
        Converter("c", "toy", "bad")
