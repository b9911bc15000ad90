"""``diff_transformer``: differential attention against an fp64 oracle of Ye et al. (2025) eq. 1-3, and λ = 0.

No pip package ships the Differential Transformer, so the signature test recomputes a layer from its weights with the
paper's equations (RoPE, two causal softmax maps per head, ``λ = exp(λq1·λk1) - exp(λq2·λk2) + λ_init``, per-head
RMSNorm, ``(1 - λ_init)``), whole and stepped through a static KV cache, with grouped key/value heads too.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, redraw_parameters, signature
from edifice_attention.diff_transformer import lambda_init_for_layer

TOL = 1e-5
B, T, D = 2, 11, 32


def diff_oracle(mixer: Any, x: torch.Tensor, helpers: Any, *, rope: bool = True) -> torch.Tensor:
    """Eq. 1-3 in fp64 from the mixer's weights: ``x [B, T, D]`` -> ``[B, T, D]``."""
    w = {n: p.detach().double() for n, p in mixer.named_parameters()}
    h, hk, d = mixer.n_diff_heads, mixer.n_kv_heads // 2, mixer.head_dim
    x = x.double()
    Bx, Tx, _ = x.shape
    pos = torch.arange(Tx)
    q = (x @ w["q_proj.weight"].T).view(Bx, Tx, 2 * h, d).transpose(1, 2)  # heads 2i, 2i+1 = Q1, Q2 of head i
    k = (x @ w["k_proj.weight"].T).view(Bx, Tx, 2 * hk, d).transpose(1, 2)
    v = (x @ w["v_proj.weight"].T).view(Bx, Tx, hk, 2 * d).transpose(1, 2)  # value heads of 2d
    if rope:
        q, k = helpers.rope(q, pos), helpers.rope(k, pos)
    lam = (
        torch.exp(w["lambda_q1"] @ w["lambda_k1"]) - torch.exp(w["lambda_q2"] @ w["lambda_k2"]) + mixer.lambda_init
    )  # eq. 2
    group = h // hk
    heads = []
    for i in range(h):
        a1 = torch.softmax(helpers.causal_scores(q[:, 2 * i], k[:, (2 * i) // group], d**-0.5), -1)
        a2 = torch.softmax(helpers.causal_scores(q[:, 2 * i + 1], k[:, (2 * i + 1) // group], d**-0.5), -1)
        o = (a1 - lam * a2) @ v[:, i // group]  # eq. 1, (B, T, 2d)
        o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-5) * w["head_norm.weight"]
        heads.append(o * (1 - mixer.lambda_init))  # eq. 3
    return torch.cat(heads, -1) @ w["o_proj.weight"].T


def build(**overrides: Any) -> Any:
    torch.manual_seed(0)
    fields = {"d_model": D, "n_layers": 2, "n_heads": 2, "d_ff": 48, **overrides}
    model = edifice.build("diff_transformer", **fields).eval()
    return redraw_parameters(model, seed=3)


def check_mixer(helpers: Any, **overrides: Any) -> None:
    model = build(**overrides)
    mixer = model.layers[1].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    want = diff_oracle(mixer, x, helpers).float()
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B, max_len=T)
        pieces = [mixer(x[:, :4], positions=torch.arange(4), state=state)]
        pieces += [mixer(x[:, t : t + 1], positions=torch.tensor([t]), state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("diff_transformer")
@pytest.mark.parametrize("overrides", [{}, {"n_heads": 4, "n_kv_heads": 2}], ids=["mha", "gqa"])
def test_diff_attention_matches_fp64_oracle(overrides: dict[str, Any], variant_helpers: Any) -> None:
    check_mixer(variant_helpers, **overrides)


@signature("diff_transformer")
def test_lambda_zero_is_the_first_softmax_map(variant_helpers: Any) -> None:
    # λ = 0 (λ_init = 0 and the λ vectors zero, so exp(0) - exp(0) + 0): the output is the first map alone,
    # o_proj(RMSNorm(softmax(Q1 K1^T / sqrt(d)) V)).
    model = build(lambda_init=0.0)
    mixer = model.layers[0].mixer
    with torch.no_grad():
        for p in (mixer.lambda_q1, mixer.lambda_k1, mixer.lambda_q2, mixer.lambda_k2):
            p.zero_()
    assert float(mixer.lambda_full().detach()) == 0.0
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    w = {n: p.detach().double() for n, p in mixer.named_parameters()}
    d, pos = mixer.head_dim, torch.arange(T)
    q = variant_helpers.rope((x.double() @ w["q_proj.weight"].T).view(B, T, 4, d).transpose(1, 2), pos)
    k = variant_helpers.rope((x.double() @ w["k_proj.weight"].T).view(B, T, 4, d).transpose(1, 2), pos)
    v = (x.double() @ w["v_proj.weight"].T).view(B, T, 2, 2 * d).transpose(1, 2)
    first = torch.softmax(variant_helpers.causal_scores(q[:, 0::2], k[:, 0::2], d**-0.5), -1) @ v  # (B, 2, T, 2d)
    first = first * torch.rsqrt(first.square().mean(-1, keepdim=True) + 1e-5) * w["head_norm.weight"]
    want = first.transpose(1, 2).reshape(B, T, 4 * d) @ w["o_proj.weight"].T
    with torch.no_grad():
        torch.testing.assert_close(mixer(x).double(), want, atol=TOL, rtol=TOL)
        # and the second map matters once λ != 0
        mixer.lambda_q1.fill_(0.3)
        mixer.lambda_k1.fill_(0.3)
        assert (mixer(x).double() - want).abs().max() > 1e-2


def test_signature_fails_with_unmasked_attention(variant_helpers: Any) -> None:
    with mutate_op("sdpa"), pytest.raises(AssertionError):
        check_mixer(variant_helpers)


def test_lambda_init_schedule_and_initialisation() -> None:
    assert lambda_init_for_layer(0) == pytest.approx(0.2)  # l = 1: 0.8 - 0.6
    assert lambda_init_for_layer(9) == pytest.approx(0.8 - 0.6 * math.exp(-2.7))
    torch.manual_seed(0)
    model: Any = edifice.build("diff_transformer", d_model=256, n_layers=3, n_heads=2, d_ff=32)
    inits = [layer.mixer.lambda_init for layer in model.layers]
    assert inits == pytest.approx([0.8 - 0.6 * math.exp(-0.3 * i) for i in range(3)])
    lam = torch.cat([p.detach() for layer in model.layers for n, p in layer.mixer.named_parameters() if "lambda" in n])
    assert 0.08 < float(lam.std()) < 0.12 and abs(float(lam.mean())) < 0.02  # N(0, 0.1²), 3 x 4 x 64 draws
    fixed: Any = edifice.build("diff_transformer", d_model=32, n_layers=2, n_heads=2, lambda_init=0.5)
    assert [layer.mixer.lambda_init for layer in fixed.layers] == [0.5, 0.5]


def test_decoding_matches_forward(variant_helpers: Any) -> None:
    model = build(vocab_size=40, window=5)
    ids = torch.randint(0, 40, (B, 13), generator=torch.Generator().manual_seed(4))
    variant_helpers.decode_matches(model, ids)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 36, "n_heads": 4}, "2 \\* n_heads must divide d_model=36"),
        ({"lambda_init": 1.0}, "lambda_init"),
        ({"lambda_std": 0.0}, "lambda_std"),
    ],
)
def test_bad_config_raises(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(edifice.ConfigError, match=message):
        edifice.config("diff_transformer", **{"d_model": 32, **overrides})
