"""``laser``: an fp64 oracle of Duvvuri & Dhillon (2025) eq. 4, ``log(softmax(QK^T/sqrt(d)) exp(V))``, causal."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, redraw_parameters, signature

B, T, D = 2, 10, 32


def build(**overrides: Any) -> Any:
    torch.manual_seed(0)
    fields = {"d_model": D, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 48, **overrides}
    return redraw_parameters(edifice.build("laser", **fields).eval(), seed=1)


def check_mixer(helpers: Any, offset: float = 0.0) -> None:
    mixer = build(attention_bias=True).layers[1].mixer
    with torch.no_grad():
        mixer.v_proj.bias.add_(offset)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    q, k, v = helpers.heads(mixer, x)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    attn = torch.softmax(helpers.causal_scores(q, k, q.shape[-1] ** -0.5), -1)
    heads = torch.logsumexp(attn.log().unsqueeze(-1) + v.unsqueeze(-3), dim=-2)  # eq. 4: log(A exp(V)), no shift
    helpers.mixer_matches(mixer, x, helpers.merge(mixer, heads))


@signature("laser")
@pytest.mark.parametrize("offset", [0.0, 100.0], ids=["unit", "exp-overflows-fp32"])
def test_laser_attention_matches_fp64_oracle(offset: float, variant_helpers: Any) -> None:
    # Values near 100 have exp() beyond fp32's range: the max shift (eq. 5) keeps the op finite and exact.
    check_mixer(variant_helpers, offset)


def test_signature_fails_as_softmax_attention(variant_helpers: Any) -> None:
    with mutate_op("variant_attention"), pytest.raises(AssertionError):
        check_mixer(variant_helpers)


def test_decoding_matches_forward(variant_helpers: Any) -> None:
    model = build(vocab_size=30)
    ids = torch.randint(0, 30, (B, 12), generator=torch.Generator().manual_seed(3))
    variant_helpers.decode_matches(model, ids)


def test_bad_config_raises() -> None:
    with pytest.raises(edifice.ConfigError, match="attention_dropout"):
        edifice.config("laser", d_model=32, attention_dropout=0.1)
