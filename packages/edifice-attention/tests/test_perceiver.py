"""Signature and converter tests of ``perceiver`` against transformers' ``PerceiverModel`` (no pre/post-processors).

Parity: ``from_perceiver`` maps a tiny random ``PerceiverModel`` -- latents cross-attending to the input array with a
padding mask, two weight-shared repeats of a two-layer latent self-attention block, and a Perceiver IO
``PerceiverBasicDecoder`` with trainable output queries -- to a model whose latents and decoded outputs equal
transformers' (fp32, 1e-5). Norms and biases are perturbed so every mapped tensor matters; the ``sdpa`` mutation
(attention that ignores the padding mask) breaks the masked parity.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import PerceiverConfig as HFConfig
from transformers import PerceiverModel
from transformers.models.perceiver.modeling_perceiver import PerceiverBasicDecoder

import edifice
from edifice.testing import mutate_op, signature
from edifice_attention.perceiver import from_perceiver

TOL = 1e-5
B, T, D_IN = 3, 9, 6


def tiny_hf(decoder: bool) -> Any:
    torch.manual_seed(0)
    hf = HFConfig(
        num_latents=5,
        d_latents=16,
        d_model=D_IN,
        num_blocks=2,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        num_cross_attention_heads=2,
        cross_attention_widening_factor=2,
        self_attention_widening_factor=2,
    )
    dec = None
    if decoder:
        dec = PerceiverBasicDecoder(
            hf,
            output_num_channels=7,
            position_encoding_type="trainable",
            output_index_dims=4,
            num_channels=16,
            num_heads=2,
            widening_factor=2,
            use_query_residual=True,
            final_project=True,
            trainable_position_encoding_kwargs={"num_channels": 16, "index_dims": 4},
        )
    model = PerceiverModel(hf, decoder=dec).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            if name.endswith(("query.weight", "key.weight")):
                p.mul_(10.0)  # peaked attention, so masking and head layout matter
            if name.startswith("decoder.") and name.endswith(("value.weight", "output.dense.weight")):
                p.mul_(10.0)  # the decoded outputs then depend visibly on the latents (and so on the mask)
    return model


def compare(decoder: bool) -> float:
    hf = tiny_hf(decoder)
    ours = from_perceiver(hf).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, T, D_IN, generator=gen)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 6:] = False
    mask[2, :3] = False
    with torch.no_grad():
        out = hf(inputs=x, attention_mask=mask.long())
        want = out.logits if decoder else out.last_hidden_state
        got = ours(x=x, attention_mask=mask)
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    return float((got - want).abs().max())


@signature("perceiver")
def test_latents_match_transformers_perceiver_model() -> None:
    assert compare(decoder=False) < TOL


@signature("perceiver")
def test_perceiver_io_decoder_matches_transformers() -> None:
    assert compare(decoder=True) < TOL


def test_signature_fails_when_attention_ignores_the_mask() -> None:
    with mutate_op("sdpa"), pytest.raises(AssertionError):
        compare(decoder=False)


def test_padding_is_exact_and_cost_is_latent_sized() -> None:
    model = edifice.build("perceiver", d_in=4, d_model=8, num_latents=3, n_layers=1, n_heads=2, n_cross_heads=1).eval()
    x = torch.randn(1, 5, 4)
    padded = torch.cat([x, torch.randn(1, 3, 4)], 1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        torch.testing.assert_close(model(x=padded, attention_mask=mask), model(x=x), atol=1e-6, rtol=1e-6)
        assert model(x=torch.randn(2, 50, 4)).shape == (2, 3, 8)


def test_bad_config_and_converter_input() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        edifice.config("perceiver", d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="n_cross_heads"):
        edifice.config("perceiver", d_in=5, n_cross_heads=2)
    with pytest.raises(TypeError, match="model or"):
        from_perceiver(3)
    hf = tiny_hf(False)
    sd = dict(hf.state_dict())
    sd["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(edifice.CheckpointError, match="unexpected keys"):
        from_perceiver((hf.config, sd))
