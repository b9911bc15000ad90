"""``softpick``: the rectified softmax against its formula on hand-made scores, and an fp64 layer oracle."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import edifice
from edifice.ops.attention_variants import SOFTPICK_EPS, normalize_scores
from edifice.testing import mutate_op, redraw_parameters, signature

B, T, D = 2, 10, 32


def softpick64(scores: torch.Tensor) -> torch.Tensor:
    """Zuhri et al. eq. 3 as written, in fp64, over the finite entries of each row (``-inf`` = masked)."""
    keep = torch.isfinite(scores)
    e = torch.where(keep, torch.exp(scores.masked_fill(~keep, 0.0)) - 1, 0.0)
    return torch.relu(e) / (e.abs().sum(-1, keepdim=True) + SOFTPICK_EPS)


@signature("softpick")
def test_softpick_matches_its_formula_on_hand_made_scores() -> None:
    x = torch.tensor(
        [
            [math.log(2), math.log(3), 0.0, -math.log(2)],  # (1, 2, 0, 0) / (1 + 2 + 0 + 0.5)
            [-1.0, -2.0, -0.5, -3.0],  # all below zero: a head that attends nowhere
            [5.0, 1.0, float("-inf"), 0.5],  # a masked key adds nothing
            [60.0, 59.0, -4.0, float("-inf")],  # e^x near fp32's limit: the stable form is needed
        ],
        dtype=torch.float64,
    )
    got = normalize_scores(x.float(), torch.isfinite(x), "softpick")
    torch.testing.assert_close(got[0], torch.tensor([1.0, 2.0, 0.0, 0.0]) / (3.5 + SOFTPICK_EPS))
    assert got[1].abs().max() == 0
    torch.testing.assert_close(got.double(), softpick64(x), atol=1e-6, rtol=1e-5)
    assert float(got[3].sum()) == pytest.approx(1.0, abs=1e-6)  # (e^60 + e^59 - 2) / (that + 1 - e^-4 + eps)


def check_mixer(helpers: Any) -> None:
    torch.manual_seed(0)
    model = edifice.build("softpick", d_model=D, n_layers=2, n_heads=4, d_ff=48).eval()
    mixer = redraw_parameters(model, seed=1).layers[1].mixer
    x = 2 * torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    q, k, v = helpers.heads(mixer, x)
    weights = softpick64(helpers.causal_scores(q, k, q.shape[-1] ** -0.5))
    assert (weights == 0).any() and (weights > 0).any()  # the rectification is exercised
    helpers.mixer_matches(mixer, x, helpers.merge(mixer, weights @ v))


@signature("softpick")
def test_softpick_attention_matches_fp64_oracle(variant_helpers: Any) -> None:
    check_mixer(variant_helpers)


def test_signature_fails_as_softmax_attention(variant_helpers: Any) -> None:
    with mutate_op("variant_attention"), pytest.raises(AssertionError):
        check_mixer(variant_helpers)


def test_decoding_matches_forward(variant_helpers: Any) -> None:
    torch.manual_seed(0)
    model = redraw_parameters(edifice.build("softpick", **edifice.get_spec("softpick").tiny).eval(), seed=4)
    ids = torch.randint(0, 64, (B, 12), generator=torch.Generator().manual_seed(3))
    variant_helpers.decode_matches(model, ids)


def test_bad_config_raises() -> None:
    with pytest.raises(edifice.ConfigError, match="softcap"):
        edifice.config("softpick", d_model=32, softcap=5.0)
