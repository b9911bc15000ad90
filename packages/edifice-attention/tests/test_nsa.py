"""``nsa``: an fp64 per-query oracle of Native Sparse Attention (Yuan et al. 2025 eq. 5-12: compression MLP with
intra-block positions, group-summed top-n with initial + local blocks, sliding window, per-head sigmoid gates), forward
and stepped decoding; the selection branch equals dense causal attention when it keeps every block and differs when
it does not; padding; the op mutations are caught."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import mutate_op, redraw_parameters, signature

B, T, D = 2, 14, 32
NSA = {"cmp_size": 4, "cmp_stride": 2, "select_block": 4, "select_top_n": 2, "init_blocks": 1, "local_blocks": 1}
NSA |= {"nsa_window": 3}


def build(**overrides: Any) -> Any:
    torch.manual_seed(0)
    fields = {"d_model": D, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 48, "vocab_size": 64}
    return redraw_parameters(edifice.build("nsa", **(fields | NSA | overrides)).eval(), seed=1)


def nsa_oracle(mixer: Any, x: torch.Tensor, helpers: Any, c: dict[str, int]) -> torch.Tensor:
    """fp64, one (batch, key/value head, query) at a time: eq. 5 of the three branches written out."""
    q, k, v = helpers.heads(mixer, x)
    W = {n: p.detach().double() for n, p in mixer.named_parameters()}
    cl, d, ls, w = c["cmp_size"], c["cmp_stride"], c["select_block"], c["nsa_window"]
    Bx, Hq, Tq, hd = q.shape
    G, scale = Hq // k.shape[1], hd**-0.5
    gates = torch.sigmoid(x.double() @ W["gate_proj.weight"].T).view(Bx, Tq, Hq, 3)

    def phi(span: torch.Tensor, kind: str) -> torch.Tensor:  # eq. 7: MLP of the block plus its position encoding
        hidden = W[f"cmp_{kind}.0.weight"] @ (span + W[f"cmp_pos_{kind}"]).reshape(-1)
        return W[f"cmp_{kind}.2.weight"] @ torch.nn.functional.silu(hidden)

    def attend(h: int, b: int, keys: list[int], kk: torch.Tensor, vv: torch.Tensor, p: int) -> torch.Tensor:
        if not keys:
            return torch.zeros(vv.shape[-1], dtype=torch.float64)
        weights = torch.softmax(torch.stack([q[b, h, p] @ kk[t] for t in keys]) * scale, 0)
        return weights @ vv[keys]

    out = torch.zeros(Bx, Hq, Tq, v.shape[-1], dtype=torch.float64)
    for b in range(Bx):
        for g in range(k.shape[1]):
            kk, vv = k[b, g], v[b, g]
            for p in range(Tq):
                spans = [i for i in range(Tq) if i * d + cl - 1 <= p]
                kc = torch.stack([phi(kk[i * d : i * d + cl], "k") for i in spans]) if spans else None
                vc = torch.stack([phi(vv[i * d : i * d + cl], "v") for i in spans]) if spans else None
                o_cmp, rel = {}, dict.fromkeys(range(len(spans)), 0.0)
                for h in range(g * G, (g + 1) * G):
                    o_cmp[h] = attend(h, b, list(range(len(spans))), kc, vc, p) if spans else torch.zeros(hd).double()
                    if spans:
                        for n, pr in enumerate(torch.softmax((kc @ q[b, h, p]) * scale, 0).tolist()):
                            rel[n] += pr  # eq. 10: summed over the group
                cur = p // ls
                score = {}
                for j in range(cur + 1):  # eq. 9: compressed tokens overlapping selection block j
                    inside = [rel[n] for n, i in enumerate(spans) if i * d < (j + 1) * ls and j * ls < i * d + cl]
                    if inside:
                        score[j] = sum(inside)
                forced = [j for j in range(cur + 1) if j < c["init_blocks"] or j > cur - c["local_blocks"]]
                others = sorted((j for j in score if j not in forced), key=lambda j: (-score[j], j))
                chosen = set(forced) | set(others[: max(c["select_top_n"] - len(forced), 0)])
                for h in range(g * G, (g + 1) * G):
                    o_slc = attend(h, b, [t for t in range(p + 1) if t // ls in chosen], kk, vv, p)
                    o_win = attend(h, b, list(range(max(p - w + 1, 0), p + 1)), kk, vv, p)
                    gc, gs, gw = gates[b, p, h]
                    out[b, h, p] = gc * o_cmp[h] + gs * o_slc + gw * o_win
    return helpers.merge(mixer, out)


def check_mixer(helpers: Any, **overrides: int) -> None:
    mixer = build(**overrides).layers[1].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    helpers.mixer_matches(mixer, x, nsa_oracle(mixer, x, helpers, NSA | overrides))


@signature("nsa")
@pytest.mark.parametrize(
    "overrides",
    [{}, {"cmp_size": 2, "cmp_stride": 2, "select_block": 2, "select_top_n": 3}, {"init_blocks": 0}],
    ids=str,
)
def test_nsa_matches_fp64_oracle_forward_and_decoding(variant_helpers: Any, overrides: dict[str, int]) -> None:
    check_mixer(variant_helpers, **overrides)


@pytest.mark.parametrize("op", ["block_sparse_attention", "sdpa"])
def test_signature_fails_when_an_op_is_mutated(variant_helpers: Any, op: str) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        check_mixer(variant_helpers)


@pytest.mark.parametrize(("top_n", "dense"), [(4, True), (2, False)])
def test_selection_branch_is_dense_causal_attention_when_it_keeps_every_block(
    variant_helpers: Any, top_n: int, dense: bool
) -> None:
    mixer = build(select_top_n=top_n).layers[0].mixer  # ceil(14 / 4) = 4 selection blocks
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(4))
    q, k, v = variant_helpers.heads(mixer, x)
    attn = torch.softmax(variant_helpers.causal_scores(q, k.repeat_interleave(2, 1), q.shape[-1] ** -0.5), -1)
    want = (attn @ v.repeat_interleave(2, 1)).float()
    with torch.no_grad():
        _, o_slc, _ = mixer.branches(*(t.float() for t in (q, k, v)), causal=True)
    assert torch.allclose(o_slc, want, atol=1e-5) == dense


def test_model_decodes_through_a_static_cache(variant_helpers: Any) -> None:
    ids = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(5))
    variant_helpers.decode_matches(build(), ids, prefill=5)


def test_left_padding_is_exact() -> None:
    model = build(d_in=6, vocab_size=None)
    x = torch.randn(1, 11, 6, generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.randn(1, 3, 6), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 11])
    with torch.no_grad():
        torch.testing.assert_close(model(x=padded, attention_mask=mask)[:, 3:], model(x=x), atol=1e-5, rtol=1e-5)


def test_compression_gets_gradients() -> None:
    model = build(vocab_size=None, d_in=6).train()
    model(x=torch.randn(1, T, 6)).float().square().mean().backward()
    mixer = model.layers[0].mixer
    for p in (mixer.cmp_pos_k, mixer.cmp_k[0].weight, mixer.cmp_v[2].weight, mixer.gate_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("cmp_stride", 5), ("select_top_n", 0), ("init_blocks", -1), ("nsa_window", 0), ("window", 4)],
)
def test_bad_config_names_the_field(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        build(**{field: value})


def test_block_sparse_op_matches_fla_naive_nsa_selection() -> None:
    """The selected-block branch's op against fla's independent ``naive_nsa_selection`` on the same block indices."""
    naive = pytest.importorskip("fla.ops.nsa.naive")
    gen = torch.Generator().manual_seed(6)
    Bn, Tn, Hq, Hk, d, bs, S = 2, 13, 4, 2, 8, 3, 3
    q, k, v = (torch.randn(Bn, Tn, h, d, generator=gen) for h in (Hq, Hk, Hk))
    n_blocks = -(-Tn // bs)
    idx = torch.full((Bn, Tn, Hk, S), -1, dtype=torch.long)
    for b in range(Bn):
        for t in range(Tn):
            for h in range(Hk):  # the query's own block and up to S - 1 random earlier ones, distinct
                past = torch.randperm(t // bs, generator=gen)[: S - 1]
                chosen = torch.cat([torch.tensor([t // bs]), past])
                idx[b, t, h, : len(chosen)] = chosen
    mask = torch.zeros(Bn, Hk, Tn, n_blocks + 1, dtype=torch.bool)
    mask.scatter_(3, idx.clamp_min(-1).where(idx >= 0, n_blocks).permute(0, 2, 1, 3), True)
    want = naive.naive_nsa_selection(q, k, v, idx, block_size=bs)
    got = edifice.ops.block_sparse_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), mask[..., :n_blocks], block_size=bs, causal=True
    ).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
