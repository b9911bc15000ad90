"""The single input validator and example-input generator, driven by specs."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from edifice import ArchConfig, ArchSpec, InputError, TensorSpec, field
from edifice.inputs import active_specs, example_inputs, resolve_shape, validate_inputs


@dataclasses.dataclass(kw_only=True)
class SeqConfig(ArchConfig):
    arch: str = field("seq", "Registry name.")
    d_model: int = field(8, "Width.")
    vocab_size: int | None = field(None, "Vocabulary or None.")
    output: str = field("all", "Pooling.")


def _spec(**kw: Any) -> ArchSpec:
    base: dict[str, Any] = {
        "name": "seq",
        "family": "toys",
        "distribution": "edifice-toys",
        "summary": "Toy.",
        "paper": None,
        "config": "x.y:SeqConfig",
        "model": "x.y:Seq",
        "inputs": {
            "x": TensorSpec(("B", "T", "d_model"), when="vocab_size is None"),
            "input_ids": TensorSpec(
                ("B", "T"), dtype="int64", domain="int[0, vocab_size)", when="vocab_size is not None"
            ),
            "attention_mask": TensorSpec(("B", "T"), dtype="bool", domain="bool", optional=True),
            "timestep": TensorSpec(("B",), domain="float[0, 1]", optional=True),
        },
        "outputs": {"y": TensorSpec(("B", "T if output == 'all' else None", "d_model"))},
    }
    base.update(kw)
    return ArchSpec(**base)


def test_active_specs_follow_when() -> None:
    assert set(active_specs(_spec().inputs, SeqConfig())) == {"x", "attention_mask", "timestep"}
    assert "input_ids" in active_specs(_spec().inputs, SeqConfig(vocab_size=5))


def test_resolve_shape_drops_none_dims() -> None:
    out = _spec().outputs["y"]
    assert resolve_shape(out, SeqConfig(), {"B": 2, "T": 3}) == (2, 3, 8)
    assert resolve_shape(out, SeqConfig(output="last"), {"B": 2, "T": 3}) == (2, 8)


def test_valid_inputs_bind_symbols() -> None:
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert validate_inputs(_spec(), SeqConfig(), {"x": x, "attention_mask": mask}) == {"B": 2, "T": 5}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": torch.randn(2, 5, 4)}, "seq: input 'x' expected [B, T, 8] (d_model=8), got [2, 5, 4]"),
        ({"x": torch.randn(2, 8)}, "seq: input 'x' expected [B, T, 8] (d_model=8), got [2, 8]"),
        (
            {"x": torch.zeros(2, 5, 8, dtype=torch.long)},
            "seq: input 'x' expected dtype float32 (a floating dtype), got int64",
        ),
        ({"x": [1.0]}, "seq: input 'x' expected a torch.Tensor, got list"),
        ({}, "seq: input 'x' is required, expected [B, T, 8] (d_model=8)"),
        (
            {"x": torch.randn(2, 5, 8), "y": torch.ones(1)},
            "seq: unexpected input 'y'; expected inputs: x, attention_mask, timestep",
        ),
        (
            {"x": torch.randn(2, 5, 8), "attention_mask": torch.ones(3, 5, dtype=torch.bool)},
            "seq: input 'attention_mask' expected [B, T], got [3, 5]",
        ),
        (
            {"x": torch.randn(2, 5, 8), "attention_mask": torch.ones(2, 5)},
            "seq: input 'attention_mask' expected dtype bool, got float32",
        ),
        (
            {"x": torch.randn(2, 5, 8), "timestep": torch.full((2,), 2.0)},
            "seq: input 'timestep' expected values in [0, 1], got min 2 max 2",
        ),
    ],
)
def test_invalid_inputs_have_one_format(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as info:
        validate_inputs(_spec(), SeqConfig(), inputs)
    assert str(info.value) == message


def test_token_ids_domain_and_dtype() -> None:
    cfg = SeqConfig(vocab_size=10)
    validate_inputs(_spec(), cfg, {"input_ids": torch.tensor([[0, 9]])})
    with pytest.raises(InputError, match=r"expected values in \[0, 10\) \(vocab_size=10\), got min 0 max 10"):
        validate_inputs(_spec(), cfg, {"input_ids": torch.tensor([[0, 10]])})
    with pytest.raises(InputError, match=r"int64 or int32"):
        validate_inputs(_spec(), cfg, {"input_ids": torch.zeros(1, 2)})


def test_example_inputs_match_the_spec() -> None:
    inputs = example_inputs(_spec(), SeqConfig(), 3, dims={"T": 4})
    assert set(inputs) == {"x"} and inputs["x"].shape == (3, 4, 8)
    validate_inputs(_spec(), SeqConfig(), inputs)
    everything = example_inputs(_spec(), SeqConfig(), 2, include_optional=True)
    assert everything["attention_mask"].all() and everything["attention_mask"].dtype == torch.bool
    assert ((everything["timestep"] >= 0) & (everything["timestep"] <= 1)).all()
    validate_inputs(_spec(), SeqConfig(), everything)
    ids = example_inputs(_spec(), SeqConfig(vocab_size=7), 2, generator=torch.Generator().manual_seed(1))["input_ids"]
    assert ids.dtype == torch.int64 and ids.min() >= 0 and ids.max() < 7


def test_graph_batch_vector() -> None:
    spec = _spec(
        layout="graph",
        inputs={
            "x": TensorSpec(("N", "d_model")),
            "edge_index": TensorSpec((2, "E"), dtype="int64", domain="int[0, N)"),
            "batch": TensorSpec(("N",), dtype="int64", domain="int[0, B)"),
            "pos": TensorSpec(("N", 3), domain="float[-1, 1]"),
            "labels": TensorSpec(("N",), dtype="int64", domain="int"),
        },
    )
    inputs = example_inputs(spec, SeqConfig(), 3, dims={"N": 7})
    assert inputs["batch"].tolist() == sorted(inputs["batch"].tolist()) and set(inputs["batch"].tolist()) == {0, 1, 2}
    assert inputs["edge_index"].max() < 7
    validate_inputs(spec, SeqConfig(), inputs)


def test_graph_edges_stay_inside_their_graph() -> None:
    spec = _spec(
        layout="graph",
        inputs={
            "x": TensorSpec(("N", "d_model")),
            "edge_index": TensorSpec((2, "E"), dtype="int64", domain="int[0, N)"),
            "batch": TensorSpec(("N",), dtype="int64", domain="int[0, B)"),
        },
    )
    inputs = example_inputs(spec, SeqConfig(), 3, dims={"N": 9, "E": 40})
    src, dst = inputs["edge_index"]
    assert torch.equal(inputs["batch"][src], inputs["batch"][dst])


def test_expression_of_an_unbound_symbol_is_not_checked() -> None:
    spec = _spec(inputs={"x": TensorSpec(("B", "T", "d_model")), "cu_seqlens": TensorSpec(("S + 1",), dtype="int32")})
    validate_inputs(spec, SeqConfig(), {"x": torch.randn(1, 5, 8), "cu_seqlens": torch.tensor([0, 2, 5])})
