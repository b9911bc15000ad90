"""Signature and converter tests of ``nystromformer`` against transformers' ``NystromformerModel``.

Parity: ``from_nystromformer`` maps a tiny random ``NystromformerModel`` (perturbed norms and biases, landmarks fewer
than the tokens so the Nyström path runs, the value convolution on) to a model whose output equals
``last_hidden_state`` (fp32, 1e-5). transformers' default pseudo-inverse initialisation divides by the largest column
sum over the whole batch; with one sequence and one head that equals ours (the paper's per-matrix ``‖A‖₁``), and for
more, transformers' other option (``init_option != "original"``) is ours. Property: with every position a landmark
the op is exact softmax attention (fp64, given enough pseudo-inverse iterations); the ``nystrom_attention`` mutation
(exact attention in place of the approximation) breaks the parity.
"""

from __future__ import annotations

import pytest
import torch
from transformers import NystromformerConfig as HFConfig
from transformers import NystromformerModel

import edifice
from edifice import ops
from edifice.testing import mutate_op, signature
from edifice_attention.nystromformer import from_nystromformer

TOL = 1e-5
SEQ, LANDMARKS = 12, 4


def tiny_hf(heads: int = 2, original_init: bool = False) -> NystromformerModel:
    torch.manual_seed(0)
    hf = HFConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=32,
        max_position_embeddings=20,
        segment_means_seq_len=SEQ,
        num_landmarks=LANDMARKS,
        conv_kernel_size=5,
        type_vocab_size=2,
    )
    model = NystromformerModel(hf).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias") or "conv" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            if "self.query.weight" in name or "self.key.weight" in name:
                p.mul_(20.0)  # peaked attention: the Nyström approximation then differs visibly from exact softmax
    if not original_init:
        for layer in model.encoder.layer:
            layer.attention.self.init_option = "per-matrix"  # transformers' exact ‖A‖₁ per batch row and head
    return model


def max_error(hf: NystromformerModel, batch: int) -> float:
    ours = from_nystromformer(hf).eval()
    ids = torch.randint(0, 40, (batch, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(input_ids=ids).last_hidden_state
        logits = ours(input_ids=ids)
        torch.testing.assert_close(logits, want @ hf.embeddings.word_embeddings.weight.T, atol=TOL, rtol=TOL)
        ours.lm_head = torch.nn.Identity()
        got = ours(input_ids=ids)
    return float((got - want).abs().max())


@signature("nystromformer")
def test_from_nystromformer_matches_transformers() -> None:
    assert max_error(tiny_hf(), batch=3) < TOL


@signature("nystromformer")
def test_matches_transformers_default_init_for_one_sequence_and_head() -> None:
    assert max_error(tiny_hf(heads=1, original_init=True), batch=1) < TOL


def test_signature_fails_with_exact_attention() -> None:
    with mutate_op("nystrom_attention"), pytest.raises(AssertionError):
        test_from_nystromformer_matches_transformers()


@signature("nystromformer")
def test_equals_softmax_attention_when_landmarks_equal_the_length() -> None:
    model = edifice.build("nystromformer", d_model=8, n_heads=2, n_layers=1, num_landmarks=7, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 7, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    exact = (q @ k.transpose(-1, -2)).softmax(-1) @ v
    # The Nyström path itself (no exact shortcut) with m = T: A A⁺ A V = A V once the pseudo-inverse has converged.
    for iters, tol in ((60, 1e-9), (model.config.pinv_iters, None)):
        got = ops.nystrom_attention(q, k, v, num_landmarks=7, pinv_iters=iters)
        err = float((got - exact).abs().max())
        if tol is not None:
            assert err < tol, err
        else:
            print(f"m = T, 6 iterations: max error to softmax attention {err:.2e}")
    # The layer takes the exact shortcut for T <= m and so equals softmax attention there.
    x = torch.randn(2, 7, 8, generator=gen, dtype=torch.float64)
    mixer = model.layers[0].mixer
    mixer.conv = None
    d = mixer.head_dim
    heads = [p(x).view(2, 7, 2, d).transpose(1, 2) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj)]
    ref = ((heads[0] @ heads[1].transpose(-1, -2)) / d**0.5).softmax(-1) @ heads[2]
    torch.testing.assert_close(mixer(x), mixer.o_proj(ref.transpose(1, 2).reshape(2, 7, 8)), atol=1e-10, rtol=1e-10)


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="conv_kernel_size"):
        edifice.config("nystromformer", conv_kernel_size=4)
    with pytest.raises(ValueError, match="n_heads"):
        edifice.config("nystromformer", d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="num_landmarks"):
        edifice.config("nystromformer", num_landmarks=0)
    hf = tiny_hf()
    sd = dict(hf.state_dict())
    sd["encoder.layer.0.attention.self.extra.weight"] = torch.zeros(1)
    with pytest.raises(edifice.CheckpointError, match="unexpected keys"):
        from_nystromformer((hf.config, sd))
