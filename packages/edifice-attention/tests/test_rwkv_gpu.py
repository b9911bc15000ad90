"""GPU parity: ``rwkv`` converted from flash-linear-attention's ``RWKV7ForCausalLM`` against fla's own model (Triton).

fla's RWKV-7 runs only on CUDA, so this is where the independent pip implementation itself is checked; on CPU the
signature test checks the same model against fla's pure-PyTorch references (``test_rwkv.py``). fla's layer takes its
chunked kernel (``chunk_rwkv7``) for T >= 64 and its fused recurrent kernel for shorter inputs without gradients; both
are compared. Run on the GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

import edifice

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fla's RWKV-7 runs on Triton)"),
]

D, VOCAB = 128, 64


@pytest.mark.parametrize("length", [100, 20], ids=["chunk_rwkv7", "fused_recurrent_rwkv7"])
def test_converted_model_matches_fla_rwkv7_on_gpu(length: int) -> None:
    """fp32 logits against fla's kernels (relative error), and fla in bf16 within the contract's bf16 tolerance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = pytest.importorskip("fla.models")
        config = models.RWKV7Config(hidden_size=D, num_hidden_layers=2, head_dim=64, vocab_size=VOCAB)
        torch.manual_seed(0)
        fla_model: Any = models.RWKV7ForCausalLM(config).cuda().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in fla_model.parameters():  # fla zero-initialises W_o and the FFN's W_v: noise makes every path count
            p.add_(0.05 * torch.randn(p.shape, generator=gen).cuda())
    model: Any = edifice.convert("fla.models.RWKV7ForCausalLM", fla_model).cuda().eval()
    ids = torch.randint(0, VOCAB, (2, length), generator=gen).cuda()
    with torch.no_grad():
        got = model(input_ids=ids).float()
        for dtype, tol in ((torch.float32, 1e-3), (torch.bfloat16, 2e-2)):
            want = fla_model.to(dtype)(input_ids=ids).logits.float()
            err = float((got - want).norm() / want.norm())
            assert err <= tol, f"rwkv vs fla RWKV7ForCausalLM (T={length}, {dtype}): relative error {err:.2e} > {tol}"
