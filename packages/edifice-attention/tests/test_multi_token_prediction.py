"""``multi_token_prediction``: n transformer-layer heads on a shared trunk (Gloeckle et al. 2024), proven by oracles.

No pip package ships these parallel heads (transformers' ``MtpModel`` is DeepSeek-V3's sequential MTP, a different
module), so the signature is the paper's equations in fp64: head ``i``'s logits at position ``t`` are
``W_u norm(H_i(trunk(x)))_t`` computed by hand from the weights (eq. 3-4), the loss is the sum over heads of the
cross-entropies against the token ``i`` positions ahead (eq. 2), and self-speculative decoding returns exactly the
tokens of plain greedy decoding (§3.2). Collapsing the heads into one generic head breaks the oracle. Only the oracle
test is marked ``@signature``: the loss and decoding tests compare the model with itself, so a mutated attention or
norm op (``--edifice-mutate``) cannot make them fail, by design.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_attention.multi_token_prediction import multi_token_loss, speculative_generate

V, D = 64, 32
TINY = {"d_model": D, "n_heads": 4, "n_kv_heads": 2, "d_ff": 48, "vocab_size": V}


def build(seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    model = edifice.build("multi_token_prediction", **{**TINY, "n_layers": 1, "n_predictions": 3, **overrides})
    return redraw_parameters(model, seed=seed + 100).eval()


def ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- fp64 oracle of eq. (3)-(4) ------------------------------------------------------------------------------------
def rms64(x: torch.Tensor, norm: nn.Module, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * norm.weight.detach().double()


def block64(block: nn.Module, h: torch.Tensor, helpers: Any, eps: float) -> torch.Tensor:
    """A pre-norm Llama block by hand: ``h + Attn(rms(h))``, then ``+ SwiGLU(rms(h))`` (causal, RoPE, GQA)."""
    mixer = block.mixer
    q, k, v = helpers.heads(mixer, rms64(h, block.mixer_norm, eps))
    G = mixer.n_heads // mixer.n_kv_heads
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    attn = torch.softmax(helpers.causal_scores(q, k, 1 / math.sqrt(q.shape[-1])), -1) @ v
    h = h + helpers.merge(mixer, attn)
    m = rms64(h, block.ffn_norm, eps)
    w = {n: p.detach().double() for n, p in block.ffn.named_parameters()}
    return h + (F.silu(m @ w["gate_proj.weight"].T) * (m @ w["up_proj.weight"].T)) @ w["down_proj.weight"].T


def oracle_head_logits(model: Any, x: torch.Tensor, helpers: Any) -> torch.Tensor:
    """``[B, T, n, V]``: ``softmax`` argument of ``P(x_{t+i} | x_{<=t}) = f_u(f_{h_i}(f_s(x)))`` in fp64 (eq. 3-4)."""
    eps = model.config.norm_eps
    z = model.embed_tokens.weight.detach().double()[x]
    for block in model.layers:  # the shared trunk f_s
        z = block64(block, z, helpers, eps)
    unembed = model.lm_head.weight.detach().double()
    heads = [rms64(block64(head, z, helpers, eps), model.norm, eps) @ unembed.T for head in model.heads]
    return torch.stack(heads, dim=2)


@signature("multi_token_prediction")
@pytest.mark.parametrize("n_layers", [1, 2])
def test_every_head_is_trunk_then_its_layer_then_the_shared_unembedding(n_layers: int, variant_helpers: Any) -> None:
    model, x = build(1, n_layers=n_layers), ids(2, 11, seed=2)
    with torch.no_grad():
        out = model(input_ids=x)
    want = oracle_head_logits(model, x, variant_helpers)
    torch.testing.assert_close(out.head_logits.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, out.head_logits[:, :, 0])
    # The heads really differ: each is its own transformer layer.
    assert (want[:, :, 1] - want[:, :, 0]).abs().max() > 0.1


def test_one_generic_head_in_place_of_the_n_heads_fails_the_oracle(variant_helpers: Any) -> None:
    model, x = build(1), ids(2, 11, seed=2)
    want = oracle_head_logits(model, x, variant_helpers)  # from the real, distinct heads
    model.heads = nn.ModuleList([model.heads[0]] * model.n_predictions)  # every head the next-token head
    with torch.no_grad(), pytest.raises(AssertionError):
        torch.testing.assert_close(model(input_ids=x).head_logits.double(), want, atol=1e-5, rtol=1e-5)


# -- eq. (1)-(2): the loss -----------------------------------------------------------------------------------------
def hand_loss(head_logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> list[float]:
    """Head i: mean over (b, t) with valid source t and target t + i of ``-log softmax(head_logits[b, t, i-1])``."""
    B, T, n, _ = head_logits.shape
    logp = torch.log_softmax(head_logits.double(), -1)
    out = []
    for i in range(1, n + 1):
        terms = [
            -logp[b, t, i - 1, labels[b, t + i]]
            for b in range(B)
            for t in range(T - i)
            if valid[b, t] and valid[b, t + i] and labels[b, t + i] != -100
        ]
        out.append(float(sum(terms) / len(terms)))
    return out


def test_loss_is_the_sum_of_the_heads_shifted_cross_entropies() -> None:
    model, x = build(3), ids(2, 10, seed=4)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False  # right padding
    labels = x.clone()
    labels[0, 5] = -100  # an ignored target
    result = model.loss(x, mask, labels=labels)
    with torch.no_grad():
        head_logits = model(input_ids=x, attention_mask=mask).head_logits
    want = hand_loss(head_logits, labels, mask)
    torch.testing.assert_close(result.head_losses.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.loss.double(), torch.tensor(sum(want), dtype=torch.float64), atol=1e-5, rtol=0)
    # Every head predicting the *next* token (a generic LM loss, n times) is not this loss.
    unshifted = sum(F.cross_entropy(head_logits[:, :-1, i].reshape(-1, V), x[:, 1:].reshape(-1)) for i in range(3))
    assert abs(float(unshifted) - sum(want)) > 1e-2


def test_loss_function_checks_shapes_and_handles_short_sequences() -> None:
    with pytest.raises(ValueError, match="head_logits"):
        multi_token_loss(torch.zeros(2, 5, V), torch.zeros(2, 5, dtype=torch.long))
    logits = torch.randn(1, 2, 3, V, requires_grad=True)
    result = multi_token_loss(logits, torch.zeros(1, 2, dtype=torch.long))  # heads 2, 3 have no target
    assert result.head_losses[1:].detach().tolist() == [0.0, 0.0]
    result.loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("variant", ["dense", "tied", "moe"])
def test_sequential_backward_gives_the_gradients_of_the_summed_loss(variant: str) -> None:
    # Fig. 2: heads run forward and backward one at a time; the gradients are those of loss().backward().
    extra = {"tied": {"tie_embeddings": True}, "moe": {"n_experts": 4, "moe_top_k": 2, "d_ff": 16}}.get(variant, {})
    model, x = build(5, **extra), ids(2, 9, seed=6)
    model.train()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :2] = False
    want = model.loss(x, mask)
    want.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    got = model.sequential_backward(x, mask)
    torch.testing.assert_close(got.loss, want.loss.detach(), atol=1e-6, rtol=1e-6)
    assert (got.aux_loss is not None) == (variant == "moe")
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_gives_identical_gradients() -> None:
    model, x = build(7), ids(2, 8, seed=8)
    model.train()
    grads = []
    for on in (False, True):
        model.set_grad_checkpointing(on)
        model.zero_grad(set_to_none=True)
        model.loss(x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-6, msg=name)


# -- §3.2: self-speculative decoding -------------------------------------------------------------------------------
def plain_greedy(model: Any, x: torch.Tensor, mask: torch.Tensor | None, steps: int) -> torch.Tensor:
    """Greedy decoding with head 1, recomputing the whole sequence by ``forward`` for every token (no cache)."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = model(input_ids=x, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
            out.append(token)
            x = torch.cat([x, token], 1)
            mask = None if mask is None else torch.cat([mask, torch.ones_like(token, dtype=torch.bool)], 1)
    return torch.cat(out, 1)


def copy_heads_model(seed: int, *, wrong_last_head: bool) -> Any:
    """All branches zero and the unembedding = the embedding: every head predicts the current token again
    (greedy repeats the prompt's last token), so every draft is right; a random last head makes its drafts wrong."""
    model = build(seed, tie_embeddings=True)
    with torch.no_grad():
        blocks = [*model.layers, *model.heads[: -1 if wrong_last_head else None]]
        for block in blocks:
            block.mixer.o_proj.weight.zero_()
            block.ffn.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speculative_decoding_returns_exactly_the_greedy_tokens(seed: int) -> None:
    model = build(10 + seed)
    x = ids(2, 5, seed=20 + seed)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, :2] = False  # the second prompt is left-padded
    want = plain_greedy(model, x, mask, 9)
    for k in (1, 2, 3):
        for static in (True, False):
            got = speculative_generate(model, x, 9, attention_mask=mask, n_draft=k, static_cache=static)
            assert torch.equal(got.tokens, want), (k, static)
            assert (got.accepted <= got.drafted).all()
            if k == 1:  # plain greedy through the cache: one call per token after the first
                assert got.calls.tolist() == [8, 8] and got.drafted.tolist() == [0, 0]


@pytest.mark.parametrize("wrong_last_head", [False, True])
def test_speculative_decoding_accepts_what_the_next_token_head_confirms(wrong_last_head: bool) -> None:
    model = copy_heads_model(30, wrong_last_head=wrong_last_head)
    x = ids(2, 4, seed=31)
    want = plain_greedy(model, x, None, 10)
    got = speculative_generate(model, x, 10)
    assert torch.equal(got.tokens, want)
    if not wrong_last_head:  # 3 tokens a call: all drafts accepted
        assert got.acceptance_rate.tolist() == [1.0, 1.0] and got.calls.tolist() == [3, 3]
    else:  # head 2 is always right, head 3 (random) is not: 2 tokens a call
        assert (got.accepted == got.calls).all() and (got.acceptance_rate < 1).all()


def test_taking_back_rejected_drafts_keeps_the_static_cache_compact() -> None:
    # A batch of one accepting nothing uses exactly the slots of plain decoding: the prompt plus one per token.
    model = build(40)
    x = ids(1, 4, seed=41)
    got = speculative_generate(model, x, 6, max_len=4 + 6 + 3 - 2)
    assert torch.equal(got.tokens, plain_greedy(model, x, None, 6))


def test_speculative_generate_rejects_bad_arguments() -> None:
    model = build(0)
    with pytest.raises(ValueError, match="n_draft"):
        speculative_generate(model, ids(1, 3, 0), 4, n_draft=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.speculative_generate(ids(1, 3, 0), 0)
    with pytest.raises(edifice.InputError):
        speculative_generate(model, ids(1, 3, 0), 20, max_len=6)  # the static cache overflows


def test_decoding_with_a_dynamic_cache_and_padded_prompt() -> None:
    model, x = build(50), ids(2, 9, seed=51)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :2] = False
    with torch.no_grad():
        want = model(input_ids=x, attention_mask=mask).head_logits
        state = model.init_state(2)
        outs = [model.step(x[:, :5], state, attention_mask=mask[:, :5])[0].head_logits]
        outs += [model.step(x[:, t : t + 1], state)[0].head_logits for t in range(5, 9)]
    got = torch.cat(outs, 1)
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[0, 2:], want[0, 2:], atol=1e-4, rtol=1e-4)


def test_bad_config_raises() -> None:
    with pytest.raises(edifice.ConfigError, match="vocab_size"):
        edifice.config("multi_token_prediction", vocab_size=None)
    with pytest.raises(edifice.ConfigError, match="n_predictions"):
        edifice.config("multi_token_prediction", n_predictions=0)
    assert edifice.config("multi_token_prediction", num_predictions=2).n_predictions == 2


# -- a tiny trained model: the heads learn to draft ----------------------------------------------------------------
@pytest.mark.slow
def test_trained_heads_draft_tokens_that_greedy_decoding_accepts() -> None:
    # Sequences x_{t+1} = (x_t + s) mod V with a per-sequence stride s in {1, 2, 3}: the stride is visible from two
    # tokens on, so heads 2 and 3 can learn x_{t+i} = x_t + i*s and their drafts get accepted.
    torch.manual_seed(0)
    model = edifice.build("multi_token_prediction", **{**TINY, "n_layers": 2, "n_predictions": 3})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)

    def batch(n: int, length: int) -> torch.Tensor:
        start, stride = torch.randint(0, V, (n, 1), generator=g), torch.randint(1, 4, (n, 1), generator=g)
        return (start + stride * torch.arange(length)) % V

    model.train()
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = model.sequential_backward(batch(16, 16)).loss
        first = float(loss) if first is None else first
        opt.step()
    assert float(loss) < 0.2 * first
    model.eval()
    prompts = batch(4, 3)
    want = plain_greedy(model, prompts, None, 12)
    got = speculative_generate(model, prompts, 12)
    assert torch.equal(got.tokens, want)
    rate = float(got.accepted.sum() / got.drafted.sum())
    print(
        f"\nmulti_token_prediction self-speculative decoding, n=3 heads: acceptance rate {rate:.2f}, "
        f"{float(got.tokens_per_call.mean()):.2f} tokens per call (plain greedy: 1.00)"
    )
    assert rate > 0.5
