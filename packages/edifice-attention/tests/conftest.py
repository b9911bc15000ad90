"""Shared helpers: tiny random transformers reference models (fp32, eager attention, eval mode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from edifice.testing import redraw_parameters

transformers = pytest.importorskip("transformers")
# transformers imports model classes lazily (seconds each); resolve them once at collection, not in a timed test.
LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM
MistralConfig, MistralForCausalLM = transformers.MistralConfig, transformers.MistralForCausalLM
MixtralConfig, MixtralForCausalLM = transformers.MixtralConfig, transformers.MixtralForCausalLM

VOCAB = 40


def _tiny(config_cls: Any, model_cls: Any, seed: int, **overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 16,
        **overrides,
    }
    config = config_cls(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # transformers initialises norm gains to one, biases to zero and weights to N(0, 0.02): noise on every parameter
    # makes each of them (and the positions' effect on the logits) observable.
    return redraw_parameters(model, seed=seed)


@pytest.fixture
def make_llama() -> Callable[..., Any]:
    """Build a tiny random ``LlamaForCausalLM`` (overrides are LlamaConfig fields)."""
    return lambda seed=0, **kw: _tiny(LlamaConfig, LlamaForCausalLM, seed, **kw)


@pytest.fixture
def make_mistral() -> Callable[..., Any]:
    """Build a tiny random ``MistralForCausalLM`` (sliding-window attention)."""
    return lambda seed=0, **kw: _tiny(MistralConfig, MistralForCausalLM, seed, **kw)


@pytest.fixture
def make_mixtral() -> Callable[..., Any]:
    """Build a tiny random ``MixtralForCausalLM`` with 4 experts, top-2."""
    defaults = {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 24}
    return lambda seed=0, **kw: _tiny(MixtralConfig, MixtralForCausalLM, seed, **{**defaults, **kw})


@pytest.fixture
def token_ids() -> Callable[..., torch.Tensor]:
    """Random token ids ``[batch, length]`` below the tiny vocabulary."""
    return lambda batch=2, length=12, seed=0: torch.randint(
        0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


# -- helpers of the softmax-attention variants' tests (diff_transformer, gated_attention, ssmax, fox, ...) ---------
def _rope64(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, rotary_dim: int | None = None) -> Any:
    """RoFormer eq. 34 in the rotate-half layout, in fp64: ``x [B, H, T, D]`` at ``positions [T]``."""
    R = x.shape[-1] if rotary_dim is None else rotary_dim
    inv = base ** (-torch.arange(0, R, 2, dtype=torch.float64) / R)
    angles = positions.double()[:, None] * inv[None, :]  # (T, R/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    rot, rest = x[..., :R], x[..., R:]
    half = torch.cat([-rot[..., R // 2 :], rot[..., : R // 2]], -1)
    return torch.cat([rot * cos + half * sin, rest], -1)


def _causal_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``q k^T * scale`` with ``-inf`` above the diagonal (queries are the last ``Tq`` of ``Tk`` positions)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    s = (q @ k.transpose(-1, -2)) * scale
    return s.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).triu(Tk - Tq + 1), float("-inf"))


def _decode_matches(model: Any, inputs: torch.Tensor, *, prefill: int = 3, atol: float = 1e-4) -> float:
    """Prefill + single steps through a static cache equal ``forward`` at every position; returns the max error."""
    with torch.no_grad():
        want = model(**{model.primary_input: inputs})
        state = model.init_state(inputs.shape[0], max_len=inputs.shape[1] + 2)
        outs = [model.step(inputs[:, :prefill], state)[0]]
        outs += [model.step(inputs[:, t : t + 1], state)[0] for t in range(prefill, inputs.shape[1])]
    got = torch.cat(outs, 1)
    torch.testing.assert_close(got, want, atol=atol, rtol=atol)
    return float((got - want).abs().max())


def _heads64(mixer: Any, x: torch.Tensor, *, base: float = 10000.0) -> tuple[torch.Tensor, ...]:
    """fp64 ``q [B, Hq, T, D]``, ``k``, ``v [B, Hk, T, D]`` of an attention mixer without qk-norm, RoPE applied."""
    w = {n: p.detach().double() for n, p in mixer.named_parameters()}
    B, T, _ = x.shape
    pos = torch.arange(T)

    def split(name: str, n: int) -> torch.Tensor:
        out = x.double() @ w[f"{name}.weight"].T + w.get(f"{name}.bias", 0.0)
        return out.view(B, T, n, -1).transpose(1, 2)

    q, k, v = split("q_proj", mixer.n_heads), split("k_proj", mixer.n_kv_heads), split("v_proj", mixer.n_kv_heads)
    if mixer.rope is not None:
        q, k = _rope64(q, pos, base), _rope64(k, pos, base)
    return q, k, v


def _merge64(mixer: Any, heads: torch.Tensor) -> torch.Tensor:
    """``o_proj`` of fp64 heads ``[B, H, T, Dv]`` -> ``[B, T, d_model]``."""
    B, H, T, Dv = heads.shape
    out = heads.transpose(1, 2).reshape(B, T, H * Dv) @ mixer.o_proj.weight.detach().double().T
    return out if mixer.o_proj.bias is None else out + mixer.o_proj.bias.detach().double()


def _mixer_matches(mixer: Any, x: torch.Tensor, want: torch.Tensor, *, atol: float = 1e-5, prefill: int = 4) -> None:
    """The mixer on ``x`` equals ``want``, whole and as a prefill plus single steps through a static cache."""
    B, T, _ = x.shape
    want = want.to(x.dtype)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), want, atol=atol, rtol=atol)
        state = mixer.init_state(B, max_len=T)
        pieces = [mixer(x[:, :prefill], positions=torch.arange(prefill), state=state)]
        pieces += [mixer(x[:, t : t + 1], positions=torch.tensor([t]), state=state) for t in range(prefill, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=atol, rtol=atol)


@pytest.fixture
def variant_helpers() -> Any:
    """fp64 oracle pieces (``rope``, ``causal_scores``, ``heads``, ``merge``) and the stepping checks
    (``mixer_matches``, ``decode_matches``) of the softmax-attention variants' tests."""
    from types import SimpleNamespace

    return SimpleNamespace(
        rope=_rope64,
        causal_scores=_causal_scores,
        heads=_heads64,
        merge=_merge64,
        mixer_matches=_mixer_matches,
        decode_matches=_decode_matches,
    )


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def _fla_lm_logits(
    sd: dict[str, torch.Tensor], ids: torch.Tensor, mixer: Any, n_layers: int, eps: float
) -> torch.Tensor:
    """An fla ``*ForCausalLM``'s logits from its state dict: embeddings, pre-norm RMSNorm blocks of ``mixer(weights,
    h)`` (the layer's ``attn.*`` weights without prefix) and a SwiGLU MLP, final RMSNorm, LM head."""
    h = sd["model.embeddings.weight"][ids]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        attn = {k.removeprefix(p + "attn."): v for k, v in sd.items() if k.startswith(p + "attn.")}
        h = h + mixer(attn, _rms(h, sd[p + "attn_norm.weight"], eps))
        m = _rms(h, sd[p + "mlp_norm.weight"], eps)
        gate, up, down = (sd[f"{p}mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        h = h + (torch.nn.functional.silu(m @ gate.T) * (m @ up.T)) @ down.T
    return _rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T


def _load_fla_layer(mixer: torch.nn.Module, weights: dict[str, torch.Tensor], *, strict: bool = True) -> None:
    """Load one fla layer's ``attn.*`` weights into our mixer through the family converter's key map."""
    from edifice_attention._linear_attention import map_fla_state_dict

    mapped = map_fla_state_dict({f"model.layers.0.attn.{k}": v for k, v in weights.items()})
    mixer.load_state_dict({k.removeprefix("layers.0.mixer."): v for k, v in mapped.items()}, strict=strict)


@pytest.fixture
def fla_oracle() -> Any:
    """Pieces of the flash-linear-attention oracles: ``rms``, ``lm_logits`` (a whole ``*ForCausalLM``) and
    ``load_layer`` (an fla layer's weights into our mixer via the converter's key map)."""
    from types import SimpleNamespace

    return SimpleNamespace(rms=_rms, lm_logits=_fla_lm_logits, load_layer=_load_fla_layer)


def _check_padded_decoding(model: torch.nn.Module, T: int, pad: int, prefill: int, seed: int) -> None:
    """Prefill ``prefill`` positions of a batch whose second row is left-padded by ``pad``, then step one position at a
    time (dynamic and static cache): equals ``forward`` on the valid positions, and the padded row equals that row
    alone."""
    ids = torch.randint(0, 30, (2, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, :pad] = False
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask)
        alone = model(input_ids=ids[1:, pad:])
        for max_len in (None, T):
            state = model.init_state(2, max_len=max_len)
            y, state = model.step(ids[:, :prefill], state, attention_mask=mask[:, :prefill])
            pieces = [y]
            for t in range(prefill, T):
                y, state = model.step(ids[:, t : t + 1], state)
                pieces.append(y)
            torch.testing.assert_close(torch.cat(pieces, 1)[:, pad:], full[:, pad:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full[1:, pad:], alone, atol=1e-4, rtol=1e-4)  # left padding is exact


@pytest.fixture
def check_padded_decoding() -> Any:
    """``check_padded_decoding(model, T, pad, prefill, seed)``: see :func:`_check_padded_decoding`."""
    return _check_padded_decoding
