"""Signature tests of ``flash_linear_attention`` against flash-linear-attention's ``LinearAttention``.

fla's layer runs Triton kernels only, so the oracle runs the layer's own modules (projections and its feature-map
modules ``feature_map_q``/``feature_map_k``, weights mapped onto ours) and its pure-PyTorch token loop
``fla.ops.linear_attn.naive.naive_recurrent_linear_attn``; the read-out RMSNorm is written out. The converter is
checked on a 2-layer ``LinearAttentionForCausalLM`` recomputed the same way. The chunked, parallel and recurrent forms
of the op agree inside the model at odd lengths, from a non-zero state.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any

import pytest
import torch

import edifice
from edifice import ops
from edifice.ops.linear_attention import linear_attention_parallel, linear_attention_recurrent
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; what is used here is plain PyTorch
    warnings.simplefilter("ignore")
    from fla.layers import LinearAttention
    from fla.models import LinearAttentionConfig, LinearAttentionForCausalLM
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

TOL = 2e-5
B, T, D, H = 2, 11, 16, 2
MAPS = ("elementwise_product", "hedgehog", "t2r", "dpfp")


def perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def fla_layer_oracle(layer: Any, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """fla's LinearAttention forward with its naive token loop in place of the Triton kernel."""
    q, k, v = (getattr(layer, f"{n}_proj")(x).view(*x.shape[:2], H, -1) for n in "qkv")
    q, k = layer.feature_map_q(q), layer.feature_map_k(k)
    o, _ = naive_recurrent_linear_attn(q, k, v, normalize=normalize)
    return layer.o_proj(rms(o, layer.norm.weight, layer.norm.eps).flatten(2))


def build_pair(feature_map: str, normalize: bool = False, seed: int = 0) -> tuple[Any, Any]:
    """An fla layer with perturbed weights and our mixer carrying them (fla's names, its norm renamed)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = LinearAttention(
            hidden_size=D, num_heads=H, feature_map="elu" if feature_map == "elu_plus_one" else feature_map,
            do_feature_map_norm=normalize, norm_eps=1e-5,
        )  # fmt: skip
    perturb(layer, seed + 1)
    width = layer.feature_map_q(torch.zeros(1, D // H)).shape[-1]
    model: Any = edifice.build(
        "flash_linear_attention", d_model=D, n_layers=1, n_heads=H, feature_map=feature_map, normalize=normalize,
        normalizer_eps=1e-10 * width**0.5, norm_eps=1e-5, chunk_size=4,
    )  # fmt: skip
    mixer = model.layers[0].mixer
    weights = {key.replace("norm.weight", "o_norm.weight"): value for key, value in layer.state_dict().items()}
    mixer.load_state_dict(weights, strict=True)
    return layer, mixer.eval()


def check_layer(feature_map: str, normalize: bool = False) -> None:
    """Forward (chunked) and prefill + single steps (recurrent) against fla's layer."""
    layer, mixer = build_pair(feature_map, normalize)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = fla_layer_oracle(layer, x, normalize)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("flash_linear_attention")
def test_flash_linear_attention_matches_fla_linear_attention() -> None:
    for feature_map in MAPS:
        check_layer(feature_map)
    check_layer("hedgehog", normalize=True)


def test_signature_fails_when_the_diagonal_is_lost() -> None:
    with mutate_op("linear_attention"), pytest.raises(AssertionError):
        check_layer("elementwise_product")


@pytest.mark.parametrize("feature_map", ["elu_plus_one", "relu", "identity"])
def test_parameter_free_maps_match_fla(feature_map: str) -> None:
    check_layer(feature_map)


def test_feature_maps_are_not_interchangeable() -> None:
    """Each learned map gives a different layer on the same projections (the choice is part of the mechanism)."""
    x = torch.randn(1, 6, D, generator=torch.Generator().manual_seed(4))
    outs = []
    for feature_map in MAPS:
        torch.manual_seed(0)
        model: Any = edifice.build("flash_linear_attention", d_model=D, n_layers=1, n_heads=H, feature_map=feature_map)
        with torch.no_grad():
            outs.append(model.layers[0].mixer(x))
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j], atol=1e-4)


def test_config_choices_are_validated() -> None:
    with pytest.raises(edifice.ConfigError, match="feature_map"):
        edifice.config("flash_linear_attention", feature_map="taylor")
    with pytest.raises(edifice.ConfigError, match="normalize"):
        edifice.config("flash_linear_attention", normalize=True)  # Hadamard features may be negative
    with pytest.raises(edifice.ConfigError, match="tie_feature_map_qk"):
        edifice.config("flash_linear_attention", feature_map="dpfp", tie_feature_map_qk=True)
    model: Any = edifice.build("flash_linear_attention", d_model=D, n_heads=H, n_layers=1, feature_map="dpfp")
    assert model.layers[0].mixer.init_state(1).recurrent.shape == (1, H, 2 * 4 * D // H, D // H)
    tied: Any = edifice.build("flash_linear_attention", d_model=D, n_heads=H, n_layers=1, tie_feature_map_qk=True)
    assert tied.layers[0].mixer.feature_map_q is tied.layers[0].mixer.feature_map_k


# -- three forms of the op inside the model ------------------------------------------------------------------------
FORMS = {"parallel": linear_attention_parallel, "recurrent": linear_attention_recurrent}


def run_forms(mixer: Any, x: torch.Tensor, start: Any, op: str, forms: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Per form: (output from ``start``, final state, output without state, its input gradient).

    The gradient is taken on the stateless call: ``step`` writes its state in place, which autograd cannot see
    through.
    """
    results = []
    for form, chunk in (("chunked", 8), ("chunked", 5), *((name, 8) for name in forms)):
        mixer.chunk_size = chunk
        state, xi = copy.deepcopy(start), x.clone().requires_grad_()
        with contextlib.ExitStack() as stack:
            if form != "chunked":
                stack.enter_context(ops.swap(op, forms[form]))
            with torch.no_grad():
                y_state = mixer(x, state=state)
            y = mixer(xi)
        (grad,) = torch.autograd.grad((y * torch.cos(y)).sum(), xi)
        results.append((y_state, state.recurrent, y.detach(), grad))
    return results


def forms_agree(mixer: Any, length: int, op: str, forms: dict[str, Any], tol: float, grad_tol: float) -> None:
    """The forms of ``op`` inside an fp64 ``mixer`` (d_model = D) agree at ``length`` from a non-zero state."""
    mixer = mixer.double()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, length, D, generator=gen, dtype=torch.float64)
    start = mixer.init_state(B, dtype=torch.float64)
    start.recurrent = start.recurrent.double()
    with torch.no_grad():
        mixer(torch.randn(B, 7, D, generator=gen, dtype=torch.float64), state=start)  # a non-zero initial state
    assert start.recurrent.abs().amin(-1).sum() > 0
    results = run_forms(mixer, x, start, op, forms)
    for other in results[1:]:
        for what, got, want in zip(("output", "state", "stateless output", "gradient"), other, results[0], strict=True):
            t = grad_tol if what == "gradient" else tol
            torch.testing.assert_close(got, want, atol=t, rtol=t, msg=lambda m, what=what: f"{what}: {m}")


@pytest.mark.parametrize("length", [1, 63, 130])
def test_chunked_parallel_and_recurrent_forms_agree(length: int) -> None:
    """Outputs, input gradients and final state of the three forms from a non-zero state (chunk 8 or 5: odd T)."""
    torch.manual_seed(0)
    model: Any = edifice.build("flash_linear_attention", d_model=D, n_layers=1, n_heads=H, feature_map="hedgehog")
    forms_agree(model.layers[0].mixer, length, "linear_attention", FORMS, 1e-9, 1e-9)


# -- converter from fla's LinearAttentionForCausalLM ---------------------------------------------------------------
def fla_model_oracle(model: Any, ids: torch.Tensor, normalize: bool) -> torch.Tensor:
    """fla's logits recomputed from its modules: pre-norm RMSNorm blocks, the layer oracle above, SwiGLU."""
    sd = model.state_dict()
    eps = model.config.norm_eps
    h = sd["model.embeddings.weight"][ids]
    for i, block in enumerate(model.model.layers):
        p = f"model.layers.{i}."
        h = h + fla_layer_oracle(block.attn, rms(h, sd[p + "attn_norm.weight"], eps), normalize)
        m = rms(h, sd[p + "mlp_norm.weight"], eps)
        gate, up, down = (sd[f"{p}mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        h = h + (torch.nn.functional.silu(m @ gate.T) * (m @ up.T)) @ down.T
    return rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T


@pytest.mark.parametrize(("feature_map", "normalize"), [("elementwise_product", False), ("dpfp", True)])
def test_converter_from_fla_matches_its_weights(feature_map: str, normalize: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = LinearAttentionConfig(
            hidden_size=D, num_hidden_layers=2, num_heads=H, vocab_size=40, intermediate_size=24,
            feature_map=feature_map, norm_feature_map=normalize,
        )  # fmt: skip
        torch.manual_seed(0)
        fla_model = LinearAttentionForCausalLM(hf)
    perturb(fla_model, 4)
    name = "fla.models.LinearAttentionForCausalLM/flash_linear_attention"
    model: Any = edifice.convert(name, fla_model, chunk_size=4)
    assert model.config.arch == "flash_linear_attention" and model.config.feature_map == feature_map
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = fla_model_oracle(fla_model, ids, normalize)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
    hf.norm_q = True
    with pytest.raises(edifice.CheckpointError, match="norm_q"):
        edifice.convert(name, (hf.to_dict(), fla_model.state_dict()))
