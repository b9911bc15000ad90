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


def _rebuilt(model: nn.Module, name: str, **changes: Any) -> nn.Module:
    """The same weights under another config of the entry (the context-extension fields changed)."""
    config = dataclasses_replace(model.config, **changes)
    other = edifice.build(name, **config).eval()
    other.load_state_dict(model.state_dict())
    return other


def dataclasses_replace(config: Any, **changes: Any) -> dict[str, Any]:
    fields = {k: v for k, v in config.to_dict().items() if k not in ("arch", "schema_version")}
    return {**fields, **changes}


SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "vocab_size": VOCAB, "rope_base": 10000.0}


@pytest.mark.slow
def test_yarn_keeps_passkey_retrieval_at_4x_the_training_length() -> None:
    torch.manual_seed(0)
    # Trained with plain RoPE (factor 1 is exactly RoPE) at length L, as a model YaRN extends would have been.
    model = train_passkey(edifice.build("yarn", **SMALL, factor=1.0, original_max_position=TRAIN_LEN))
    accuracy, finite = passkey_accuracy(model, TRAIN_LEN)
    assert finite and accuracy >= 0.95, f"the tiny model did not learn the task at L: {accuracy:.2f}"
    plain, _ = passkey_accuracy(model, 4 * TRAIN_LEN)
    extended = _rebuilt(model, "yarn", factor=4.0)
    accuracy, finite = passkey_accuracy(extended, 4 * TRAIN_LEN)
    print(f"yarn passkey accuracy at 4L: {accuracy:.3f} (plain RoPE: {plain:.3f})")
    assert finite
    assert accuracy >= 0.9
