"""``free_transformer``: the Binary Mapper, the free-bits KL and Algorithm 1 against fp64 oracles; Z enters mid-stack.

The oracles are written from the paper (Fleuret 2025, arXiv:2510.17558): the probability of each of the ``2^H``
codes as the product of its bits' Bernoulli probabilities (eq. 8) and its gradient (the straight-through estimator),
the KL to the uniform prior summed over all codes, the free-bits threshold (§3.1), and the whole network of
Algorithm 1 (first half, encoder with the learned query ζ, Binary Mapper, ``post_sampler_fc`` added to the keys and
values of block L/2 + 1, second half) in fp64 from the model's weights, through the training loss.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_attention.free_transformer import (
    FreeTransformer,
    binary_mapper,
    code_log_probs,
    free_bits_kl,
    kl_to_uniform,
    prior_codes,
    sample_codes,
)

TINY = edifice.get_spec("free_transformer").tiny  # d_model 32, 2 layers, 4 heads (2 kv), d_ff 64, vocab 64, H = 4
B, T, H = 2, 9, TINY["num_latent_bits"]
TOL = 2e-5
LOGITS = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]])  # two tokens, H = 3 bits each


def code_probs64(logits: torch.Tensor) -> torch.Tensor:
    """Eq. (8) by enumeration in fp64: ``G[..., d] = prod_h (σ(L_h) if bit h of d else 1 - σ(L_h))``."""
    p = torch.sigmoid(logits.double())
    n_bits = logits.shape[-1]
    cols = []
    for d in range(2**n_bits):
        g = torch.ones(logits.shape[:-1], dtype=torch.float64)
        for h in range(n_bits):
            g = g * (p[..., h] if (d >> h) & 1 else 1 - p[..., h])
        cols.append(g)
    return torch.stack(cols, -1)


def kl64(logits: torch.Tensor) -> torch.Tensor:
    """``D_KL(Q || U) = Σ_d G_d log(G_d / 2^-H)`` over all ``2^H`` codes, fp64."""
    G = code_probs64(logits)
    return (G * (G.log() + logits.shape[-1] * math.log(2.0))).sum(-1)


@signature("free_transformer")
def test_binary_mapper_matches_its_equations() -> None:
    G = code_probs64(LOGITS)
    torch.testing.assert_close(code_log_probs(LOGITS).exp().double(), G, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(G.sum(-1), torch.ones(2, dtype=torch.float64))

    # Eqs. (6)-(7): bit h is u_h < σ(L_h) and the code is Σ_h 2^h B_h (the bit order G uses).
    u = torch.rand(LOGITS.shape, generator=torch.Generator().manual_seed(3))
    bits = (u.double() < torch.sigmoid(LOGITS.double())).long()
    want = (bits * torch.tensor([1, 2, 4])).sum(-1)
    codes, soft = binary_mapper(LOGITS.clone().requires_grad_(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(codes, want)
    assert torch.equal(soft.detach(), F.one_hot(want, 8).float())  # the forward value is exactly the one-hot Y

    # Eq. (8), backward: the gradient of <c, Y + G - detach(G)> is the gradient of <c, G>,
    # d G_d / d L_h = G_d (U_h(d) - σ(L_h)).
    c = torch.randn(2, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    logits = LOGITS.clone().requires_grad_()
    (soft,) = binary_mapper(logits, generator=torch.Generator().manual_seed(5))[1:]
    (soft.double() * c).sum().backward()
    U = torch.tensor([[(d >> h) & 1 for h in range(3)] for d in range(8)], dtype=torch.float64)  # (8, 3)
    want_grad = ((c * G)[..., None] * (U - torch.sigmoid(LOGITS.double())[:, None, :])).sum(1)  # (2, 3)
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad.double(), want_grad, atol=1e-6, rtol=1e-5)

    # The sampled codes follow G: 20000 draws of the first token's code.
    many = sample_codes(LOGITS[:1].expand(20000, 3), generator=torch.Generator().manual_seed(6))
    freq = torch.bincount(many, minlength=8).double() / 20000
    torch.testing.assert_close(freq, G[0], atol=0.012, rtol=0.0)


@signature("free_transformer")
def test_free_bits_kl_matches_its_formula() -> None:
    logits = torch.tensor(
        [[[0.5, -1.0, 2.0], [0.0, 0.0, 0.0], [3.0, -4.0, 0.1]], [[0.2, 0.1, -0.3], [-2.0, 5.0, 1.0], [0.0, 1.0, 0.0]]]
    )  # [2, 3, 3]: some tokens far below κ (near-uniform bits), some above
    kl = kl64(logits)
    torch.testing.assert_close(kl_to_uniform(logits).double(), kl, atol=1e-6, rtol=1e-6)
    assert float(kl[0, 1]) == pytest.approx(0.0, abs=1e-12)
    kappa = 0.5 * math.log(2.0)
    want = (kl - kappa).clamp(min=0).mean()
    torch.testing.assert_close(free_bits_kl(kl_to_uniform(logits), kappa).double(), want, atol=1e-6, rtol=1e-6)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    masked = ((kl - kappa).clamp(min=0) * mask).sum() / mask.sum()
    torch.testing.assert_close(free_bits_kl(kl_to_uniform(logits), kappa, mask).double(), masked, atol=1e-6, rtol=0)
    # Tokens below κ get no gradient ("free bits"); those above get the KL's.
    x = logits.clone().requires_grad_()
    free_bits_kl(kl_to_uniform(x), kappa).backward()
    assert x.grad is not None
    below = kl < kappa
    assert below.any() and (~below).any()
    assert torch.all(x.grad[below] == 0) and torch.all(x.grad[~below].abs().sum(-1) > 0)


# -- Algorithm 1 in fp64 -------------------------------------------------------------------------------------------
def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def block64(w: dict[str, torch.Tensor], p: str, xq: torch.Tensor, xkv: torch.Tensor, causal: bool, rope: Any):
    """``block(in_q, in_kv)``: pre-norm attention (queries and residual from in_q, keys/values from in_kv), SwiGLU."""
    Bx, Tx, _ = xq.shape
    nq, nk = 4, 2
    q_in, kv_in = rms(xq, w[p + "mixer_norm.weight"]), rms(xkv, w[p + "mixer_norm.weight"])
    q = (q_in @ w[p + "mixer.q_proj.weight"].T).view(Bx, Tx, nq, -1).transpose(1, 2)
    k = (kv_in @ w[p + "mixer.k_proj.weight"].T).view(Bx, Tx, nk, -1).transpose(1, 2)
    v = (kv_in @ w[p + "mixer.v_proj.weight"].T).view(Bx, Tx, nk, -1).transpose(1, 2)
    pos = torch.arange(Tx)
    q, k = rope(q, pos), rope(k, pos)
    k, v = k.repeat_interleave(nq // nk, 1), v.repeat_interleave(nq // nk, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(Tx, Tx, dtype=torch.bool).triu(1), float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(Bx, Tx, -1) @ w[p + "mixer.o_proj.weight"].T
    h = xq + o
    m = rms(h, w[p + "ffn_norm.weight"])
    gate, up, down = (w[f"{p}ffn.{n}_proj.weight"] for n in ("gate", "up", "down"))
    return h + (F.silu(m @ gate.T) * (m @ up.T)) @ down.T


def algorithm1(
    model: FreeTransformer,
    ids: torch.Tensor,
    rope: Any,
    *,
    z: torch.Tensor | None = None,
    u: torch.Tensor | None = None,
) -> dict[str, Any]:
    """fp64 logits and per-block hidden states; Z is ``z`` or sampled by the encoder with the uniforms ``u``."""
    w = {k: v.detach().double() for k, v in model.state_dict().items()}
    n_layers, n_bits = model.config.n_layers, model.config.num_latent_bits
    x = w["embed_tokens.weight"][ids]
    hidden = []
    for n in range(n_layers // 2):
        x = block64(w, f"layers.{n}.", x, x, True, rope)
        hidden.append(x)
    out: dict[str, Any] = {}
    if z is None:
        assert u is not None
        zeta = w["zeta"].expand(*x.shape)
        bit_logits = block64(w, "encoder.", zeta, x, False, rope) @ w["encoder_readout.weight"].T
        bit_logits = bit_logits + w["encoder_readout.bias"]
        bits = (u.double() < torch.sigmoid(bit_logits)).long()
        z = (bits << torch.arange(n_bits)).sum(-1)
        out["kl"] = kl64(bit_logits)
    r = w["post_sampler_fc.weight"].T[z]  # post_sampler_fc(one_hot(z))
    x = block64(w, f"layers.{n_layers // 2}.", x, x + r, True, rope)  # in_q = X_{L/2}, in_kv = X_{L/2} + R
    hidden.append(x)
    for n in range(n_layers // 2 + 1, n_layers):
        x = block64(w, f"layers.{n}.", x, x, True, rope)
        hidden.append(x)
    out.update(logits=rms(x, w["norm.weight"]) @ w["lm_head.weight"].T, hidden=hidden, z=z)
    return out


def tiny_model(seed: int = 0, **overrides: Any) -> FreeTransformer:
    torch.manual_seed(seed)
    model = edifice.build("free_transformer", **{**TINY, **overrides}).eval()
    return redraw_parameters(model, seed=seed + 1)  # type: ignore[return-value]


def hidden_states(model: FreeTransformer, ids: torch.Tensor, z: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
    """The output of every block (forward hooks) and the logits, with Z given."""
    states: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: states.append(out[0])) for layer in model.layers]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, z=z).logits
    finally:
        for hook in hooks:
            hook.remove()
    return states, logits


def check_latent_enters_at_the_middle(model: FreeTransformer, rope: Any) -> None:
    """With Z given: every block and the logits match Algorithm 1 in fp64; blocks before L/2 do not see Z, the
    injection block and every later one do."""
    ids = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(7))
    z1, z2 = (torch.randint(0, 2**H, (B, T), generator=torch.Generator().manual_seed(s)) for s in (8, 9))
    states1, logits1 = hidden_states(model, ids, z1)
    states2, logits2 = hidden_states(model, ids, z2)
    for z, states, logits in ((z1, states1, logits1), (z2, states2, logits2)):
        want = algorithm1(model, ids, rope, z=z)
        torch.testing.assert_close(logits.double(), want["logits"], atol=TOL, rtol=TOL)
        for got, ref in zip(states, want["hidden"], strict=True):
            torch.testing.assert_close(got.double(), ref, atol=TOL, rtol=TOL)
    middle = model.injection_layer
    for index, (a, b) in enumerate(zip(states1, states2, strict=True)):
        if index < middle:
            assert torch.equal(a, b), f"block {index} (before the injection block {middle}) depends on Z"
        else:
            assert (a - b).abs().amax(-1).min() > 1e-4, f"block {index} does not depend on Z at every position"
    assert (logits1 - logits2).abs().amax(-1).min() > 1e-4


@signature("free_transformer")
@pytest.mark.parametrize("n_layers", [2, 3])
def test_algorithm_1_and_latent_injection(n_layers: int, variant_helpers: Any) -> None:
    check_latent_enters_at_the_middle(tiny_model(n_layers=n_layers), variant_helpers.rope)


def test_signature_fails_without_the_latent_injection(monkeypatch: Any, variant_helpers: Any) -> None:
    model = tiny_model()
    monkeypatch.setattr(model, "embed_codes", lambda codes: torch.zeros(*codes.shape, 32))  # R = 0: no injection
    with pytest.raises(AssertionError):
        check_latent_enters_at_the_middle(model, variant_helpers.rope)


@signature("free_transformer")
def test_training_loss_matches_the_oracle(variant_helpers: Any) -> None:
    # The default κ = 1/2 bit lies inside the spread of these tokens' KL: the threshold clips some and not others.
    model = tiny_model(seed=10)
    ids = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(11))
    loss = model.loss({"input_ids": ids}, generator=torch.Generator().manual_seed(12))
    u = torch.rand((B, T, H), generator=torch.Generator().manual_seed(12))  # the Binary Mapper's uniforms
    want = algorithm1(model, ids, variant_helpers.rope, u=u)
    ce = F.cross_entropy(want["logits"][:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    kappa = 0.5 * math.log(2.0)
    kl = (want["kl"] - kappa).clamp(min=0).mean()
    assert 0 < float((want["kl"] > kappa).double().mean()) < 1
    torch.testing.assert_close(loss.ce.double(), ce, atol=TOL, rtol=TOL)
    torch.testing.assert_close(loss.kl.double(), kl, atol=TOL, rtol=TOL)
    torch.testing.assert_close(loss.kl_raw.double(), want["kl"].mean(), atol=TOL, rtol=TOL)
    torch.testing.assert_close(loss.loss, loss.ce + loss.kl)
    # The forward with those codes gives the same logits: Z is the encoder's sample, injected as given codes.
    with torch.no_grad():
        logits = model(input_ids=ids, z=want["z"]).logits
    torch.testing.assert_close(logits.double(), want["logits"], atol=TOL, rtol=TOL)


def test_straight_through_gradient_reaches_the_encoder() -> None:
    model = tiny_model().train()
    ids = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(13))
    loss = model.loss({"input_ids": ids}, generator=torch.Generator().manual_seed(14))
    loss.ce.backward()  # the cross-entropy alone: its gradient reaches the encoder only through G (eq. 8)
    for name in ("zeta", "encoder_readout.weight", "encoder.mixer.q_proj.weight", "post_sampler_fc.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # training mode defaults to the encoder's Z and returns the free-bits KL as aux_loss
    out = model(input_ids=ids, generator=torch.Generator().manual_seed(14))
    torch.testing.assert_close(out.aux_loss, loss.kl)


def test_step_reproduces_forward_for_given_and_drawn_z() -> None:
    model = tiny_model()
    ids = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(15))
    z = torch.randint(0, 2**H, (B, T), generator=torch.Generator().manual_seed(16))
    chunks = [(0, 4), (4, 5), (5, 9)]
    with torch.no_grad():
        for max_len in (None, T):
            for kwargs, seed in (({"z": z}, None), ({}, 17), ({}, None)):
                g = None if seed is None else torch.Generator().manual_seed(seed)
                want = model(input_ids=ids, generator=g, **kwargs).logits
                g = None if seed is None else torch.Generator().manual_seed(seed)
                state = model.init_state(B, max_len=max_len, generator=g)
                pieces = []
                for a, b in chunks:
                    extra = {"z": z[:, a:b]} if kwargs else {}
                    pieces.append(model.step(ids[:, a:b], state, **extra)[0].logits)
                torch.testing.assert_close(torch.cat(pieces, 1), want, atol=1e-5, rtol=1e-5)
        # the seeded prior draws differ from the default ones, and a given z differs from both
        seeded = model(input_ids=ids, generator=torch.Generator().manual_seed(17)).logits
        assert (seeded - model(input_ids=ids).logits).abs().max() > 1e-3
        # the paper's prefill: the prompt's Z from the encoder, as forward with latent="posterior"
        want = model(input_ids=ids, latent="posterior", generator=torch.Generator().manual_seed(18))
        state = model.init_state(B)
        got = model.step(ids, state, latent="posterior", generator=torch.Generator().manual_seed(18))[0]
        torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.aux_loss, want.aux_loss)


def test_prior_codes_are_uniform_and_keyed_by_seed_and_position() -> None:
    seeds = torch.arange(64)
    positions = torch.arange(256)
    codes = prior_codes(seeds, positions, 3)  # (64, 256)
    assert codes.shape == (64, 256) and codes.dtype == torch.int64
    freq = torch.bincount(codes.flatten(), minlength=8).double() / codes.numel()
    torch.testing.assert_close(freq, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01, rtol=0)
    # Successive positions of a row and rows at one position are not correlated: all 64 pairs of codes appear.
    pairs = codes[:, :-1] * 8 + codes[:, 1:]
    assert torch.bincount(pairs.flatten(), minlength=64).min() > 0
    # A code depends on (seed, position) only: per-row positions and a slice give the same draws.
    torch.testing.assert_close(prior_codes(seeds[:2], positions[None, 10:20].expand(2, 10), 3), codes[:2, 10:20])
    big = prior_codes(torch.tensor([2**31 - 2]), torch.arange(2**20, 2**20 + 8), 24)
    assert big.min() >= 0 and big.max() < 2**24


def test_generate_is_seeded_and_keeps_the_prompt() -> None:
    model = tiny_model()
    prompt = torch.randint(0, 64, (B, 4), generator=torch.Generator().manual_seed(19))
    a = model.generate(prompt, 5, generator=torch.Generator().manual_seed(20))
    b = model.generate(prompt, 5, generator=torch.Generator().manual_seed(20))
    assert a.shape == (B, 9) and torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    greedy = model.generate(prompt, 3, temperature=0.0, prompt_latent="prior")
    with torch.no_grad():  # greedy decoding with the default prior is the argmax of forward, token by token
        for t in range(4, 7):
            want = model(input_ids=greedy[:, :t]).logits[:, -1].argmax(-1)
            assert torch.equal(greedy[:, t], want)


def test_left_padding_is_exact() -> None:
    model = tiny_model()
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(21))
    z = torch.randint(0, 2**H, (1, 6), generator=torch.Generator().manual_seed(22))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    with torch.no_grad():
        got = model(input_ids=padded, attention_mask=mask).logits[:, 3:]  # the prior keys on valid positions
        torch.testing.assert_close(got, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        got = model(input_ids=padded, attention_mask=mask, z=torch.cat([z[:, :3], z], 1)).logits[:, 3:]
        torch.testing.assert_close(got, model(input_ids=ids, z=z).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_latent_bits": 0}, "num_latent_bits"),
        ({"num_latent_bits": 25}, "num_latent_bits"),
        ({"free_bits": -0.5}, "free_bits"),
        ({"n_experts": 4}, "n_experts"),
    ],
)
def test_bad_config_raises(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(edifice.ConfigError, match=field):
        edifice.config("free_transformer", **{**TINY, **overrides})


def test_bad_calls_raise() -> None:
    model = tiny_model()
    ids = torch.randint(0, 64, (B, T))
    with pytest.raises(edifice.InputError, match="'z'"):
        model(input_ids=ids, z=torch.full((B, T), 2**H))
    with pytest.raises(ValueError, match="latent"):
        model(input_ids=ids, latent="encoder")
    features = edifice.build("free_transformer", **{**TINY, "vocab_size": None, "d_in": 5})
    with pytest.raises(ValueError, match="vocab_size"):
        features.loss({"x": torch.randn(B, T, 5)})
    with pytest.raises(edifice.InputError, match="'z' expected"):
        model(input_ids=ids, z=torch.zeros(B, T + 1, dtype=torch.long))
    with pytest.raises(edifice.InputError, match="'z'"):
        model.step(ids[:, :2], model.init_state(B), z=torch.zeros(B, 2))
