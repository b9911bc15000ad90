"""Signature and converter tests of ``fnet`` against transformers' ``FNetModel`` and the 2-D DFT as matrices.

The property: the Fourier sublayer equals ``Re(F_T X F_d)`` with ``F_n[j, k] = exp(-2πi jk / n)`` written out as
explicit DFT matrices (fp64), independent of ``torch.fft``; a generic (learned or attention) mixer does not.
The parity: ``from_fnet`` maps a tiny random ``FNetModel`` (perturbed LayerNorms and biases) to a model whose output
equals ``last_hidden_state`` (fp32, 1e-5).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import FNetConfig as HFFNetConfig
from transformers import FNetModel

import edifice
from edifice.testing import signature
from edifice_attention.fnet import fourier_mix, from_fnet

TOL = 1e-5


def dft(n: int) -> torch.Tensor:
    j = torch.arange(n, dtype=torch.float64)
    angle = -2 * math.pi * torch.outer(j, j) / n
    return torch.complex(torch.cos(angle), torch.sin(angle))


@signature("fnet")
@pytest.mark.parametrize("T", [1, 7, 16])
def test_fourier_mixing_is_the_real_part_of_the_2d_dft(T: int) -> None:
    d = 12
    x = torch.randn(2, T, d, dtype=torch.float64, generator=torch.Generator().manual_seed(T))
    want = (dft(T) @ x.to(torch.complex128) @ dft(d)).real  # F_seq X F_hidden (both symmetric)
    torch.testing.assert_close(fourier_mix(x), want, atol=1e-10, rtol=1e-10)
    model = edifice.build("fnet", d_model=d, n_layers=1, dtype=torch.float64)
    torch.testing.assert_close(model.layers[0].mixer(x), want, atol=1e-10, rtol=1e-10)


def tiny_fnet() -> FNetModel:
    torch.manual_seed(0)
    hf = HFFNetConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        intermediate_size=40,
        max_position_embeddings=24,
        type_vocab_size=2,
    )
    model = FNetModel(hf).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


@signature("fnet")
def test_from_fnet_matches_transformers_fnetmodel() -> None:
    hf = tiny_fnet()
    ours = from_fnet(hf).eval()
    ids = torch.randint(0, 50, (3, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(input_ids=ids).last_hidden_state
        logits = ours(input_ids=ids)
        torch.testing.assert_close(logits, want @ hf.embeddings.word_embeddings.weight.T, atol=TOL, rtol=TOL)
        ours.lm_head = torch.nn.Identity()
        got = ours(input_ids=ids)
    err = (got - want).abs().max().item()
    assert err < TOL, err
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


def test_parity_fails_with_a_different_mixer() -> None:
    """A generic mixer in place of the DFT breaks the parity (the signature test is not shape-only)."""
    hf = tiny_fnet()
    ours = from_fnet(hf).eval()
    for layer in ours.layers:
        layer.mixer.forward = lambda x, **_: x.flip(1)  # type: ignore[method-assign]
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(2))
    ours.lm_head = torch.nn.Identity()
    with torch.no_grad():
        assert not torch.allclose(ours(input_ids=ids), hf(input_ids=ids).last_hidden_state, atol=1e-3)


def test_converter_rejects_unknown_keys_and_bad_sources() -> None:
    hf = tiny_fnet()
    sd = dict(hf.state_dict())
    sd["encoder.layer.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(edifice.CheckpointError, match="unexpected keys"):
        from_fnet((hf.config, sd))
    with pytest.raises(TypeError, match="model or"):
        from_fnet(42)


def test_bad_config_and_mask_raise() -> None:
    with pytest.raises(ValueError, match="max_len"):
        edifice.config("fnet", max_len=4)
    model = edifice.build("fnet", d_model=8, n_layers=1)
    with pytest.raises(ValueError, match="attention_mask"):
        model.layers[0].mixer(torch.zeros(1, 3, 8), mask=torch.ones(1, 3, dtype=torch.bool))
