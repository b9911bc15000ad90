"""Regressions the registry-wide fuzzer (tests/test_fuzz.py) found in core's config and input validation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from edifice import ArchConfig, ArchSpec, ConfigError, InputError, TensorSpec, field
from edifice.blocks.activations import activation_names
from edifice.config import ACTIVATION_NAMES
from edifice.inputs import example_inputs, validate_inputs


@dataclasses.dataclass(kw_only=True)
class FuzzConfig(ArchConfig):
    arch: str = field("fz", "Registry name.")
    d_model: int = field(4, "Width.")
    vocab_size: int | None = field(None, "Vocabulary or None.")
    init_std: float = field(0.02, "Init scale.")
    activation: str = field("gelu", "Activation.")
    encoding: str = field("constant", "'constant' or 'bernoulli'.")

    def validate(self) -> None:
        self.check_positive("init_std")
        self.check_activation("activation")


def _spec(**inputs: TensorSpec) -> ArchSpec:
    return ArchSpec(
        name="fz",
        family="toys",
        distribution="edifice-toys",
        summary="Toy.",
        paper=None,
        config="x.y:FuzzConfig",
        model="x.y:Fz",
        inputs=inputs
        or {
            "x": TensorSpec(("B", "T", "d_model"), when="vocab_size is None"),
            "input_ids": TensorSpec(
                ("B", "T"), dtype="int64", domain="int[0, vocab_size)", when="vocab_size is not None"
            ),
            "attention_mask": TensorSpec(("B", "T"), dtype="bool", domain="bool", optional=True),
        },
        outputs={"y": TensorSpec(("B", "T", "d_model"))},
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value: float) -> None:
    # NaN passed check_positive (every comparison with NaN is false) and reached the weights.
    with pytest.raises(ConfigError, match=r"field 'init_std' expects float \(a finite number\)"):
        FuzzConfig(init_std=value)


def test_unknown_activation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"field 'activation'='gleu' is not an activation.*Did you mean 'gelu'"):
        FuzzConfig(activation="gleu")
    assert FuzzConfig(activation="GELU").activation == "GELU"  # get_activation is case-insensitive


def test_activation_names_match_the_blocks() -> None:
    assert set(activation_names()) == ACTIVATION_NAMES


def test_input_on_another_device_is_refused() -> None:
    x = torch.randn(2, 3, 4, device="meta")
    with pytest.raises(InputError, match=r"^fz: input 'x' expected on device cpu \(the model's\), got meta"):
        validate_inputs(_spec(), FuzzConfig(), {"x": x}, device=torch.device("cpu"))


def test_float_input_must_match_the_model_dtype() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(InputError, match=r"^fz: input 'x' expected dtype float32 \(the model's parameters\)"):
        validate_inputs(_spec(), FuzzConfig(), {"x": x}, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the operands itself
        validate_inputs(_spec(), FuzzConfig(), {"x": x.bfloat16()}, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16])
def test_token_ids_must_be_int64_or_int32(dtype: torch.dtype) -> None:
    # nn.Embedding and cross_entropy take int64/int32 indices only: other integer dtypes failed deep inside torch.
    ids = torch.zeros(2, 3, dtype=dtype)
    with pytest.raises(InputError, match=r"expected dtype int64 \(int64 or int32\)"):
        validate_inputs(_spec(), FuzzConfig(vocab_size=5), {"input_ids": ids})
    validate_inputs(_spec(), FuzzConfig(vocab_size=5), {"input_ids": ids.int()})


@pytest.mark.parametrize(("shape", "symbol"), [((0, 3, 4), "B"), ((2, 0, 4), "T")])
def test_empty_batch_or_sequence_is_refused(shape: tuple[int, ...], symbol: str) -> None:
    with pytest.raises(InputError, match=rf"^fz: input 'x' expected \[B, T, 4\] .*with {symbol} >= 1"):
        validate_inputs(_spec(), FuzzConfig(), {"x": torch.randn(shape)})


def test_mask_of_another_batch_size_is_not_broadcast() -> None:
    x, mask = torch.randn(2, 3, 4), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(InputError, match=r"input 'attention_mask' expected \[B, T\]"):
        validate_inputs(_spec(), FuzzConfig(), {"x": x, "attention_mask": mask})


def test_domain_bounds_may_apply_under_some_configs_only() -> None:
    conditional = "float[0 if encoding == 'bernoulli' else None, 1 if encoding == 'bernoulli' else None]"
    spec = _spec(x=TensorSpec(("B", "d_model"), domain=conditional))
    wide = torch.full((2, 4), 3.0)
    validate_inputs(spec, FuzzConfig(), {"x": wide})  # 'constant': no bounds
    with pytest.raises(InputError, match=r"expected values in \[0, 1\]"):
        validate_inputs(spec, FuzzConfig(encoding="bernoulli"), {"x": wide})
    drawn: dict[str, Any] = example_inputs(spec, FuzzConfig(encoding="bernoulli"), 3)
    assert drawn["x"].min() >= 0 and drawn["x"].max() <= 1
    assert example_inputs(spec, FuzzConfig(), 3)["x"].shape == (3, 4)
