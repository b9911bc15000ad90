"""``sigmoid_attention``: an fp64 oracle of Ramapuram et al. (2025) eq. 2, ``σ(QK^T/sqrt(d) - log n) V``, causal."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, redraw_parameters, signature

B, T, D = 2, 10, 32


def build(**overrides: Any) -> Any:
    torch.manual_seed(0)
    fields = {"d_model": D, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 48, "bias_length": 8, **overrides}
    return redraw_parameters(edifice.build("sigmoid_attention", **fields).eval(), seed=1)


def check_mixer(helpers: Any) -> None:
    mixer = build().layers[1].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    q, k, v = helpers.heads(mixer, x)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)  # GQA: query head h reads kv head h // 2
    scores = helpers.causal_scores(q, k, q.shape[-1] ** -0.5) - math.log(8)  # b = -log n, n = bias_length
    weights = torch.sigmoid(scores)  # eq. 2: each weight on its own; sigmoid(-inf) = 0 above the diagonal
    helpers.mixer_matches(mixer, x, helpers.merge(mixer, weights @ v))


@signature("sigmoid_attention")
def test_sigmoid_attention_matches_fp64_oracle(variant_helpers: Any) -> None:
    check_mixer(variant_helpers)


def test_signature_fails_as_softmax_attention(variant_helpers: Any) -> None:
    with mutate_op("variant_attention"), pytest.raises(AssertionError):
        check_mixer(variant_helpers)


def test_bias_is_minus_log_n() -> None:
    model: Any = edifice.build("sigmoid_attention", d_model=16, n_layers=1, n_heads=2, bias_length=4096)
    assert model.layers[0].mixer.logit_bias == pytest.approx(-math.log(4096))
    explicit: Any = edifice.build("sigmoid_attention", d_model=16, n_layers=1, n_heads=2, sigmoid_bias=-2.5)
    assert explicit.layers[0].mixer.logit_bias == -2.5


def test_decoding_matches_forward(variant_helpers: Any) -> None:
    model = build(vocab_size=30, d_in=None)
    ids = torch.randint(0, 30, (B, 12), generator=torch.Generator().manual_seed(3))
    variant_helpers.decode_matches(model, ids)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"bias_length": 0}, "bias_length"), ({"softcap": 5.0}, "softcap"), ({"attention_dropout": 0.1}, "dropout")],
)
def test_bad_config_raises(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(edifice.ConfigError, match=message):
        edifice.config("sigmoid_attention", d_model=32, **overrides)
