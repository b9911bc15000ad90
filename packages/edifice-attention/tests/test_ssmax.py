"""``ssmax``: Scalable-Softmax against ``n^{s z} / sum n^{s z}`` (Nakanishi 2025 eq. 3) on hand-made scores, an fp64
layer oracle, padding and a sliding window (n counts the keys a query sees), and 4x the training length."""

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
    fields = {"d_model": D, "n_layers": 2, "n_heads": 4, "d_ff": 48, **overrides}
    return redraw_parameters(edifice.build("ssmax", **fields).eval(), seed=1)


@signature("ssmax")
@pytest.mark.parametrize("window", [None, 3])
def test_ssmax_weights_match_the_formula_on_hand_made_scores(window: int | None) -> None:
    # q k^T / sqrt(d) = z exactly (k = sqrt(d) I, v = I), so the mixer's heads return the attention weights.
    mixer = build(window=window, ssmax_bias=True).layers[0].mixer
    H, d, n_keys = 4, 8, 6
    z = torch.tensor([[0.0, 2.0, -1.0, 3.0, 0.5, 1.0]] * n_keys)  # (Tq, Tk) hand-made scores, same every row
    q = torch.zeros(1, H, n_keys, d)
    q[..., :n_keys] = z
    k = (math.sqrt(d) * torch.eye(n_keys, d)).expand(1, H, n_keys, d)
    v = torch.eye(n_keys).expand(1, H, n_keys, n_keys)
    with torch.no_grad():
        mixer.ssmax_s.copy_(torch.tensor([0.43, 1.0, 0.1, 2.0]))
        mixer.ssmax_b.copy_(torch.tensor([0.0, 0.0, 0.5, -0.2]))
        got = mixer.attend(q, k, v, causal=True, window=window)  # (1, H, Tq, Tk)
    for h in range(H):
        s, b = float(mixer.ssmax_s[h].detach()), float(mixer.ssmax_b[h].detach())
        for i in range(n_keys):
            seen = [j for j in range(i + 1) if window is None or i - j < window]
            n = len(seen)
            num = torch.tensor([n ** (s * float(z[i, j])) * math.exp(b * float(z[i, j])) for j in seen])
            want = torch.zeros(n_keys)
            want[seen] = (num / num.sum()).float()  # eq. 3: n^{s z} / sum n^{s z} (times e^{b z} with the bias)
            torch.testing.assert_close(got[0, h, i], want, atol=1e-6, rtol=1e-5)


def check_mixer(helpers: Any) -> None:
    mixer = build(n_kv_heads=2).layers[1].mixer
    with torch.no_grad():
        mixer.ssmax_s.copy_(torch.tensor([0.43, 0.8, 0.2, 1.5]))
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    q, k, v = helpers.heads(mixer, x)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    n = torch.arange(1, T + 1, dtype=torch.float64)
    scale = mixer.ssmax_s.detach().double()[:, None, None] * n.log()[:, None]  # (H, T, 1): s log n per query
    attn = torch.softmax(helpers.causal_scores(scale * q, k, q.shape[-1] ** -0.5), -1)  # (s log n) z, masked
    helpers.mixer_matches(mixer, x, helpers.merge(mixer, attn @ v))


@signature("ssmax")
def test_ssmax_attention_matches_fp64_oracle(variant_helpers: Any) -> None:
    check_mixer(variant_helpers)


def test_signature_fails_with_unmasked_attention(variant_helpers: Any) -> None:
    with mutate_op("sdpa"), pytest.raises(AssertionError):
        check_mixer(variant_helpers)


def test_padding_counts_only_valid_keys() -> None:
    model = build(d_in=6, vocab_size=None)
    x = torch.randn(1, 7, 6, generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.randn(1, 3, 6), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    with torch.no_grad():
        torch.testing.assert_close(model(x=padded, attention_mask=mask)[:, 3:], model(x=x), atol=1e-5, rtol=1e-5)


def test_runs_at_four_times_the_training_length() -> None:
    # The tiny config trains at T <= 16; at 4x (and 16x) SSMax stays finite, forward and backward.
    torch.manual_seed(0)
    model: Any = edifice.build("ssmax", **edifice.get_spec("ssmax").tiny)
    for length in (64, 256):
        ids = torch.randint(0, 64, (1, length), generator=torch.Generator().manual_seed(length))
        logits = model(input_ids=ids)
        assert torch.isfinite(logits).all()
        logits.square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_decoding_matches_forward(variant_helpers: Any) -> None:
    model = build(vocab_size=30, window=4)
    ids = torch.randint(0, 30, (B, 12), generator=torch.Generator().manual_seed(4))
    variant_helpers.decode_matches(model, ids)


def test_initialisation() -> None:
    model: Any = edifice.build("ssmax", d_model=32, n_layers=2, n_heads=4, ssmax_s_init=0.3, ssmax_bias=True)
    for layer in model.layers:
        assert torch.equal(layer.mixer.ssmax_s.detach(), torch.full((4,), 0.3))
        assert torch.equal(layer.mixer.ssmax_b.detach(), torch.zeros(4))
