"""mamba_ssd beyond parity: decoding at every prefix, chunked == recurrent forms, padding, init, config, the block."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice import ops
from edifice.ops.ssd import ssd_naive
from edifice.testing.tol import FP32, SCAN, assert_close
from edifice_ssm.mamba_ssd import GatedRMSNorm, Mamba2Mixer, Mamba2State, MambaSSD

TOKENS = {"vocab_size": 30, "d_in": None}


def build(**overrides: Any) -> MambaSSD:
    torch.manual_seed(0)
    config = {**edifice.get_spec("mamba_ssd").tiny, "n_layers": 2, **overrides}
    model = edifice.build("mamba_ssd", **config).eval()
    assert isinstance(model, MambaSSD)
    return model


def inputs(model: MambaSSD, batch: int, T: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    if c.vocab_size is not None:
        return torch.randint(0, c.vocab_size, (batch, T), generator=gen)
    return torch.randn(batch, T, c.d_in or c.d_model, generator=gen)


def call(model: MambaSSD, u: Tensor, mask: Tensor | None = None) -> Tensor:
    out = model(**{model.primary_input: u, "attention_mask": mask})
    assert isinstance(out, Tensor)
    return out


@pytest.mark.parametrize("overrides", [{}, TOKENS], ids=["features", "tokens"])
@pytest.mark.parametrize("pieces", [(1,) * 9, (4, 1, 1, 3), (9,), (2, 5, 2)], ids=["steps", "prefill", "one", "mixed"])
def test_step_equals_forward_at_every_prefix(overrides: dict[str, Any], pieces: tuple[int, ...]) -> None:
    model = build(**overrides)
    u = inputs(model, 2, sum(pieces))
    with torch.no_grad():
        full = call(model, u)
        state = model.init_state(2)
        shapes = [(s.conv.shape, s.ssm.shape) for s in state.layers]
        start, outs = 0, []
        for n in pieces:
            y, state = model.step(u[:, start : start + n], state)
            outs.append(y)
            start += n
            # Constant-size state: the same shapes after any number of positions.
            assert [(s.conv.shape, s.ssm.shape) for s in state.layers] == shapes
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="stepped")


def test_state_layout() -> None:
    model = build()
    state = model.init_state(3, dtype=torch.bfloat16)
    layer = state.layers[0]
    assert isinstance(layer, Mamba2State)
    c = model.config
    assert layer.conv.shape == (3, c.d_inner + 2 * c.n_groups * c.d_state, c.d_conv - 1)
    assert layer.conv.dtype == torch.bfloat16
    assert layer.ssm.shape == (3, c.n_heads, c.head_dim, c.d_state)
    assert layer.ssm.dtype == torch.float32  # scan states stay fp32


def test_chunked_and_recurrent_forms_agree_in_the_model() -> None:
    """The chunked SSD (forward) and the per-step recurrence (the op's naive form) give the same model outputs."""
    model = build(chunk_size=3)
    u = inputs(model, 2, 13)
    with torch.no_grad():
        chunked = call(model, u)
        with ops.swap("ssd", ssd_naive):
            recurrent = call(model, u)
    assert_close(chunked, recurrent, SCAN, name="chunked vs recurrent")
    for size in (1, 5, 64):  # the chunk size is an implementation detail
        other = build(chunk_size=size)
        with torch.no_grad():
            assert_close(call(other, u), chunked, SCAN, name=f"chunk_size={size}")


@pytest.mark.parametrize("overrides", [{}, TOKENS], ids=["features", "tokens"])
def test_left_and_right_padding_with_a_mask_equal_the_unpadded_run(
    overrides: dict[str, Any], padding_is_invisible: Callable[[nn.Module], None]
) -> None:
    padding_is_invisible(build(**overrides))


def test_batched_decoding_of_a_left_padded_prompt(left_padded_batch_decodes_alone: Callable[[nn.Module], None]) -> None:
    """Row 0's prompt is 2 positions shorter (left-padded); each row decodes as if it were alone."""
    left_padded_batch_decodes_alone(build(**TOKENS))


def test_initialisation_follows_the_paper() -> None:
    model = build(d_model=64, head_dim=4, n_layers=2)  # 32 heads per layer
    c = model.config
    for block in model.layers:
        mixer = block.mixer.requires_grad_(False)
        minus_A = torch.exp(mixer.A_log)
        assert bool(((minus_A >= c.a_init_min) & (minus_A <= c.a_init_max)).all())
        dt = F.softplus(mixer.dt_bias)
        assert bool(((dt >= c.dt_min * (1 - 1e-4)) & (dt <= c.dt_max * (1 + 1e-4))).all())
        # log dt is uniform on [log dt_min, log dt_max]: its mean is the midpoint (loosely, 32 draws).
        assert abs(float(dt.log().mean()) - (math.log(c.dt_min) + math.log(c.dt_max)) / 2) < 0.8
        assert torch.equal(mixer.D, torch.ones_like(mixer.D))
        assert torch.equal(mixer.norm.weight, torch.ones_like(mixer.norm.weight))
        # out_proj: nn.Linear's U(±1/sqrt(fan_in)) divided by sqrt(n_layers).
        bound = 1 / math.sqrt(c.d_inner) / math.sqrt(c.n_layers)
        assert float(mixer.out_proj.weight.abs().max()) <= bound
        assert float(mixer.out_proj.weight.abs().max()) > 0.8 * bound


def test_gated_rms_norm_normalises_each_group_after_the_gate() -> None:
    norm = GatedRMSNorm(6, group_size=3, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x, z = torch.randn(2, 6), torch.randn(2, 6)
    g = x * z * torch.sigmoid(z)
    want = torch.cat([h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-5) for h in g.split(3, -1)], -1) * norm.weight
    assert_close(norm(x, z), want, FP32)
    with pytest.raises(ValueError, match="group_size must divide dim"):
        GatedRMSNorm(6, group_size=4)


def test_the_mixer_is_registered_as_the_mamba2_block() -> None:
    cls = edifice.blocks.get("mamba2")
    assert cls is Mamba2Mixer
    torch.manual_seed(0)
    mixer = cls(8, d_state=4, head_dim=4, chunk_size=2).eval()  # a hybrid's use: mixer(x, mask=, positions=, state=)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        full = mixer(x)
        state = mixer.init_state(2)
        stepped = torch.cat([mixer(x[:, :2], state=state), mixer(x[:, 2:], state=state)], 1)
    assert full.shape == (2, 5, 8)
    assert_close(stepped, full, SCAN)
    with pytest.raises(ValueError, match="head_dim=3 must divide d_inner=16"):
        cls(8, head_dim=3)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"head_dim": 5}, "must divide d_inner"),
        ({"n_groups": 3}, "must divide the number of heads"),
        ({"dt_min": 0.5}, "must be <= dt_max"),
        ({"a_init_min": 20.0}, "must be <= a_init_max"),
        ({"d_state": 0}, "d_state"),
    ],
)
def test_invalid_configs_raise_config_errors(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(edifice.ConfigError, match=match):
        edifice.config("mamba_ssd", **{**edifice.get_spec("mamba_ssd").tiny, **overrides})


def test_original_option_names_are_accepted() -> None:
    config = edifice.config("mamba_ssd", state_size=16, expand_factor=2, conv_size=3, hidden_size=32, num_layers=1)
    assert (config.d_state, config.expand, config.d_conv, config.d_model, config.n_layers) == (16, 2, 3, 32, 1)
