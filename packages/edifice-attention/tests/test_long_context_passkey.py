"""Slow: yarn and dual_chunk_attention run at 4x their training length without NaN and keep retrieving a passkey.

The passkey task is the standard one (Mohtashami & Jaggi 2023, used by YaRN §4.2 and ChunkLlama §4.2) shrunk to a
tiny vocabulary: a context of filler tokens hides one passkey token (a "digit", the only one in the context) and ends
with a query token; the model must output the passkey. A tiny model is *trained* here, on CPU, at the training
length ``L``; it is then evaluated at ``4 L`` with the mechanism that extends its context (YaRN with ``s = 4`` and
``original_max_position = L``; dual-chunk attention with ``chunk_size = L``), with no further training. Retrieval is
content-based (one attention head finds the only digit), which is what passkey retrieval tests; what breaks it at
``4 L`` is the position encoding the model never saw, which is what these mechanisms fix. The plain-RoPE model's
accuracy at ``4 L`` is printed beside each result for information (it is not asserted).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edifice

TRAIN_LEN = 32
QUERY, DIGITS, VOCAB = 0, range(1, 11), 64


def passkey_batch(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [batch, length], passkey [batch])``: fillers, one digit at a random place, the query token last."""
    ids = torch.randint(11, VOCAB, (batch, length), generator=generator)
    keys = torch.randint(DIGITS.start, DIGITS.stop, (batch,), generator=generator)
    where = torch.randint(0, length - 1, (batch,), generator=generator)
    ids[torch.arange(batch), where] = keys
    ids[:, -1] = QUERY
    return ids, keys


def train_passkey(model: nn.Module, *, steps: int = 400, seed: int = 0) -> nn.Module:
    """Adam on the passkey loss at ``TRAIN_LEN`` (loss on the last position only)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        ids, keys = passkey_batch(32, TRAIN_LEN, g)
        loss = F.cross_entropy(model(input_ids=ids)[:, -1], keys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def passkey_accuracy(model: nn.Module, length: int, *, seed: int = 123) -> tuple[float, bool]:
    """Accuracy on 256 fresh passkeys at ``length``, and whether every logit is finite."""
    ids, keys = passkey_batch(256, length, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(input_ids=ids)
    return float((logits[:, -1].argmax(-1) == keys).float().mean()), bool(torch.isfinite(logits).all())


SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "vocab_size": VOCAB, "rope_base": 10000.0}


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A plain-RoPE decoder trained at ``TRAIN_LEN``: the model both mechanisms extend (neither changes weights)."""
    torch.manual_seed(0)
    model = train_passkey(edifice.build("decoder_only", **SMALL))
    accuracy, finite = passkey_accuracy(model, TRAIN_LEN)
    assert finite and accuracy >= 0.95, f"the tiny model did not learn the task at L: {accuracy:.2f}"
    return model


def _extended(trained: nn.Module, name: str, **fields: Any) -> nn.Module:
    """The trained weights under ``name`` with its context-extension fields (same parameter names as decoder_only)."""
    model = edifice.build(name, **SMALL, **fields).eval()
    model.load_state_dict(trained.state_dict())
    return model


@pytest.mark.slow
def test_yarn_keeps_passkey_retrieval_at_4x_the_training_length(trained: nn.Module) -> None:
    plain, _ = passkey_accuracy(trained, 4 * TRAIN_LEN)
    extended = _extended(trained, "yarn", factor=4.0, original_max_position=TRAIN_LEN)
    assert (
        passkey_accuracy(_extended(trained, "yarn", factor=1.0, original_max_position=TRAIN_LEN), TRAIN_LEN)[0] >= 0.95
    )
    accuracy, finite = passkey_accuracy(extended, 4 * TRAIN_LEN)
    print(f"yarn passkey accuracy at 4L: {accuracy:.3f} (plain RoPE: {plain:.3f})")
    assert finite
    assert accuracy >= 0.9


@pytest.mark.slow
def test_dual_chunk_attention_keeps_passkey_retrieval_at_4x_the_training_length(trained: nn.Module) -> None:
    # ChunkLlama's settings for training length L: chunk_size 3L/4, local window L/16, chunk length 3L/4 - L/16.
    w = TRAIN_LEN // 16
    extended = _extended(trained, "dual_chunk_attention", chunk_size=3 * TRAIN_LEN // 4 - w, local_window=w)
    assert extended.config.max_relative_position < TRAIN_LEN  # every distance it forms was seen in training
    plain, _ = passkey_accuracy(trained, 4 * TRAIN_LEN)
    accuracy, finite = passkey_accuracy(extended, 4 * TRAIN_LEN)
    print(f"dual_chunk_attention passkey accuracy at 4L: {accuracy:.3f} (plain RoPE: {plain:.3f})")
    assert finite
    assert accuracy >= 0.9
