"""``infllm_v2``: an fp64 per-query oracle of InfLLM-V2's selection (MiniCPM4 §2.1: semantic kernels, max over a
block's kernels, GQA-shared top-k, initial + local blocks, dense-sparse switch), forward and stepped decoding; every
block kept = dense causal attention (both through the switch and through top-k), fewer = not; padding; mutation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, redraw_parameters, signature

B, T, D = 2, 13, 32
SPARSE = {"sparse_block_size": 3, "kernel_size": 4, "kernel_stride": 2, "sparse_top_k": 3, "init_blocks": 1}
SPARSE |= {"local_blocks": 1, "dense_len": 5}


def build(**overrides: Any) -> Any:
    torch.manual_seed(0)
    fields = {"d_model": D, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 48, "vocab_size": 64}
    return redraw_parameters(edifice.build("infllm_v2", **(fields | SPARSE | overrides)).eval(), seed=1)


def infllm_v2_oracle(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, c: dict[str, int]) -> torch.Tensor:
    """fp64, one (batch, key/value head, query) at a time, the selection rules written out."""
    bs, ks, st = c["sparse_block_size"], c["kernel_size"], c["kernel_stride"]
    Bq, Hq, Tq, d = q.shape
    G = Hq // k.shape[1]
    out = torch.zeros(Bq, Hq, Tq, v.shape[-1], dtype=torch.float64)
    for b in range(Bq):
        for g in range(k.shape[1]):
            kk, vv = k[b, g], v[b, g]
            for p in range(Tq):
                cur = p // bs
                kernels = [i for i in range(Tq) if i * st + ks - 1 <= p]
                rel = dict.fromkeys(kernels, 0.0)
                for h in range(g * G, (g + 1) * G):  # softmax over visible kernels, summed over the group
                    if kernels:
                        s = torch.stack([q[b, h, p] @ kk[i * st : i * st + ks].mean(0) for i in kernels]) * d**-0.5
                        for i, w in zip(kernels, torch.softmax(s, 0).tolist(), strict=True):
                            rel[i] += w
                score = {}
                for j in range(cur + 1):
                    inside = [rel[i] for i in kernels if i * st < (j + 1) * bs and j * bs < i * st + ks]
                    if inside:
                        score[j] = max(inside)
                forced = [j for j in range(cur + 1) if j < c["init_blocks"] or j > cur - c["local_blocks"]]
                others = sorted((j for j in score if j not in forced), key=lambda j: (-score[j], j))
                chosen = set(forced) | set(others[: max(c["sparse_top_k"] - len(forced), 0)])
                if p + 1 <= c["dense_len"]:
                    chosen = set(range(cur + 1))
                keys = [t for t in range(p + 1) if t // bs in chosen]
                for h in range(g * G, (g + 1) * G):
                    w = torch.softmax(torch.stack([q[b, h, p] @ kk[t] for t in keys]) * d**-0.5, 0)
                    out[b, h, p] = w @ vv[keys]
    return out


def check_mixer(helpers: Any, **overrides: int) -> None:
    mixer = build(**overrides).layers[1].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    q, k, v = helpers.heads(mixer, x)
    helpers.mixer_matches(mixer, x, helpers.merge(mixer, infllm_v2_oracle(q, k, v, SPARSE | overrides)))


@signature("infllm_v2")
@pytest.mark.parametrize(
    "overrides", [{}, {"sparse_top_k": 2, "init_blocks": 0}, {"local_blocks": 2, "kernel_stride": 1}], ids=str
)
def test_infllm_v2_matches_fp64_oracle_forward_and_decoding(variant_helpers: Any, overrides: dict[str, int]) -> None:
    check_mixer(variant_helpers, **overrides)


def test_signature_fails_when_the_selection_is_ignored(variant_helpers: Any) -> None:
    with mutate_op("block_sparse_attention"), pytest.raises(AssertionError):
        check_mixer(variant_helpers)


@pytest.mark.parametrize(
    ("overrides", "dense"), [({"dense_len": T}, True), ({"sparse_top_k": 5}, True), ({}, False)], ids=str
)
def test_every_block_is_dense_causal_attention_and_fewer_are_not(
    variant_helpers: Any, overrides: dict[str, int], dense: bool
) -> None:
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(4))
    mixer = build(**overrides).layers[0].mixer
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
    x = torch.randn(1, 11, 6, generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.randn(1, 3, 6), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 11])
    with torch.no_grad():
        torch.testing.assert_close(model(x=padded, attention_mask=mask)[:, 3:], model(x=x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("field", "value"),
    [("kernel_size", 0), ("kernel_stride", 0), ("sparse_top_k", 0), ("init_blocks", -1), ("dense_len", 0)],
)
def test_bad_config_names_the_field(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        build(**{field: value})
