"""``moba``: an fp64 per-query oracle of MoBA's gate (Lu et al. 2025 eq. 3, 5-6, the causal current block), forward and
stepped decoding; every block kept = dense causal attention, fewer = not; padding; the op mutation is caught."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, redraw_parameters, signature

B, T, D = 2, 11, 32


def build(**overrides: Any) -> Any:
    torch.manual_seed(0)
    fields = {"d_model": D, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 48, "vocab_size": 64}
    fields |= {"moba_block_size": 3, "moba_top_k": 2, **overrides}
    return redraw_parameters(edifice.build("moba", **fields).eval(), seed=1)


def moba_oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bs: int, top_k: int) -> torch.Tensor:
    """fp64, one query at a time: gate s_j = q . mean(K_j) over past blocks, top k-1 of them + the current block."""
    Bq, Hq, Tq, _ = q.shape
    G = Hq // k.shape[1]
    out = torch.zeros(Bq, Hq, Tq, v.shape[-1], dtype=torch.float64)
    scale = q.shape[-1] ** -0.5
    for b in range(Bq):
        for h in range(Hq):
            kk, vv = k[b, h // G], v[b, h // G]
            for p in range(Tq):
                cur = p // bs
                gate = {j: float(q[b, h, p] @ kk[j * bs : (j + 1) * bs].mean(0)) for j in range(cur)}
                chosen = [*sorted(gate, key=lambda j: (-gate[j], j))[: top_k - 1], cur]
                keys = [t for j in chosen for t in range(j * bs, min((j + 1) * bs, p + 1))]
                w = torch.softmax(torch.stack([q[b, h, p] @ kk[t] for t in keys]) * scale, 0)
                out[b, h, p] = w @ vv[keys]
    return out


def check_mixer(helpers: Any, top_k: int = 2) -> None:
    mixer = build(moba_top_k=top_k).layers[1].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    q, k, v = helpers.heads(mixer, x)
    helpers.mixer_matches(mixer, x, helpers.merge(mixer, moba_oracle(q, k, v, 3, top_k)))


@signature("moba")
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moba_matches_fp64_oracle_forward_and_decoding(variant_helpers: Any, top_k: int) -> None:
    check_mixer(variant_helpers, top_k)


def test_signature_fails_when_the_selection_is_ignored(variant_helpers: Any) -> None:
    with mutate_op("block_sparse_attention"), pytest.raises(AssertionError):
        check_mixer(variant_helpers)


def test_every_block_is_dense_causal_attention_and_fewer_are_not(variant_helpers: Any) -> None:
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(4))
    for top_k, dense in ((4, True), (2, False)):  # ceil(11 / 3) = 4 blocks
        mixer = build(moba_top_k=top_k).layers[0].mixer
        q, k, v = variant_helpers.heads(mixer, x)
        attn = torch.softmax(variant_helpers.causal_scores(q, k.repeat_interleave(2, 1), q.shape[-1] ** -0.5), -1)
        want = variant_helpers.merge(mixer, attn @ v.repeat_interleave(2, 1)).float()
        with torch.no_grad():
            assert torch.allclose(mixer(x), want, atol=1e-5) == dense


def test_model_decodes_through_a_static_cache(variant_helpers: Any) -> None:
    ids = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(5))
    variant_helpers.decode_matches(build(), ids, prefill=4)


def test_left_padding_is_exact() -> None:
    model = build(d_in=6, vocab_size=None)
    x = torch.randn(1, 8, 6, generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.randn(1, 3, 6), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 8])
    with torch.no_grad():
        torch.testing.assert_close(model(x=padded, attention_mask=mask)[:, 3:], model(x=x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("moba_top_k", 0, "moba_top_k"), ("moba_block_size", 0, "moba_block_size"), ("window", 4, "window")],
)
def test_bad_config_names_the_field(field: str, value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(**{field: value})
