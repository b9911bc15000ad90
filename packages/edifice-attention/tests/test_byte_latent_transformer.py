"""``byte_latent_transformer``: parity with transformers' ``BltForCausalLM`` (weights mapped by the converter users
call on real checkpoints), the hash n-gram ids against big-integer arithmetic, causality under entropy patching,
and byte-by-byte ``step`` against ``forward`` for every patching rule.

The parity test fails if the hash embeddings, the entropy patching (its boundaries decide every mask), the max-pool
initialised cross-attention pooling, the patch-shifted decoder cross-attention or the latent transformer were
replaced by a generic layer: transformers computes each of them independently.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.registry import get_spec
from edifice.testing import redraw_parameters, signature
from edifice_attention._blt_patching import HASH_PRIMES, entropy, hash_ngram_ids
from edifice_attention.byte_latent_transformer import ByteLatentTransformer, from_transformers

transformers = pytest.importorskip("transformers")
from transformers import BltConfig, BltForCausalLM  # noqa: E402

TOL = 2e-5
B, T = 2, 16


def hf_blt(patching: str = "entropy", threshold: float = 5.0, **extra: Any) -> Any:
    """A tiny random transformers BLT: 2 hash functions x n = 3..8, k = 2 slots, latent width != k * byte width."""
    config = BltConfig(
        vocab_size=260,
        patch_in_forward=patching == "entropy",
        patching_mode=patching,
        patch_size=4,
        patching_threshold=threshold,
        local_attention_window_len=6,
        cross_attn_k=2,
        encoder_hash_byte_group_size=[3, 4, 5, 6, 7, 8],
        encoder_hash_byte_group_vocab=37,
        encoder_hash_byte_group_nb_functions=2,
        patcher_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "sliding_window": 8,
        },
        encoder_config={"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 32},
        decoder_config={
            "hidden_size": 16,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "intermediate_size": 40,
            "hidden_size_global": 24,
        },
        global_config={"hidden_size": 24, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 48},
        attn_implementation="eager",
        use_cache=False,
        **extra,
    )
    torch.manual_seed(0)
    model = BltForCausalLM(config).eval()
    redraw_parameters(model, seed=1)
    return model


def byte_ids(seed: int, batch: int = B, length: int = T) -> torch.Tensor:
    return torch.randint(4, 260, (batch, length), generator=torch.Generator().manual_seed(seed))


def median_entropy(hf: Any, ids: torch.Tensor) -> float:
    """A threshold between the patcher's entropies, so that some bytes open patches and some do not."""
    with torch.no_grad():
        h = entropy(hf.model.patcher(ids, patch_size=None)[2])[:, 1:]
    return float(h.flatten().median()) + 1e-4


@signature("byte_latent_transformer")
def test_parity_with_transformers_entropy_patching() -> None:
    ids = byte_ids(0)
    hf = hf_blt()
    hf.config.patching_threshold = median_entropy(hf, ids)
    model = from_transformers(hf).eval()
    assert model.config.patching == "entropy" and model.latent_in_proj is not None
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids)
        _, lengths, _ = hf.model.patcher(ids, patch_size=4, threshold=hf.config.patching_threshold)
    # the patches are those of transformers' patcher: a mix of lengths, not one byte each
    counts = torch.bincount(got.patch_ids[0])
    assert counts.max() > 1 and len(counts) > 2
    # (transformers lengthens a row's last patch by one -- the next byte -- when the row has fewer patches)
    assert torch.equal(counts[:-1], lengths[0, : len(counts) - 1].long())
    torch.testing.assert_close(got.logits, want, atol=TOL, rtol=TOL)


def test_parity_with_transformers_fixed_and_byte_patching() -> None:
    ids = byte_ids(1)
    # transformers without entropy patching makes every byte a patch: fixed patching with stride 1
    hf = hf_blt(patching="none")
    model = from_transformers(hf).eval()
    assert (model.config.patching, model.config.patch_size) == ("fixed", 1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=TOL, rtol=TOL)
    # stride-4 patches passed to transformers as lengths (with the empty patch at the next byte, as the authors do)
    model = from_transformers(hf, patch_size=4).eval()
    starts = model.patch_starts(ids)  # (B, T + 1)
    bounds = torch.cat([torch.nonzero(starts[0]).flatten(), torch.tensor([T])])
    lengths = bounds.diff().expand(B, -1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids, patch_lengths=lengths).logits, atol=TOL, rtol=TOL)
        latents = model.encode(ids)
    assert latents.latent_output.shape == (B, 5, 24) and latents.num_patches.tolist() == [5, 5]


def test_hash_ids_follow_the_rolling_polynomial_hash() -> None:
    """``sum_j b_{i-n+1+j} a^j`` in 64-bit two's complement, then mod vocab, against Python's big integers."""
    ids = byte_ids(2, 1, 12)
    sizes, vocab = (3, 5, 8), 1009
    window = torch.nn.functional.pad(ids, (7, 0))
    got = hash_ngram_ids(window, sizes, 2, vocab)
    seq = [0] * 7 + ids[0].tolist()
    for i in range(12):
        for f in range(2):
            for s, n in enumerate(sizes):
                gram = seq[7 + i - n + 1 : 7 + i + 1]
                value = sum(b * HASH_PRIMES[f] ** j for j, b in enumerate(gram)) % 2**64
                value = value - 2**64 if value >= 2**63 else value
                table = f * len(sizes) + s
                assert got[0, i, table] == value % vocab + table * vocab


def tiny(**overrides: Any) -> ByteLatentTransformer:
    spec = get_spec("byte_latent_transformer")
    torch.manual_seed(0)
    model = edifice.build("byte_latent_transformer", **{**spec.tiny, **overrides}).eval()
    redraw_parameters(model.entropy_model, seed=3, vector_std=1.0) if model.entropy_model is not None else None
    return model  # type: ignore[return-value]


CASES = [
    {"entropy_rule": "global"},
    {"entropy_rule": "monotonic", "entropy_threshold": 0.05, "max_patch_length": None},
    {"patching": "fixed", "patch_size": 3, "encoder_cross_all_layers": True, "n_encoder_layers": 2},
]


def with_mixed_threshold(model: ByteLatentTransformer, ids: torch.Tensor) -> ByteLatentTransformer:
    if model.config.patching == "entropy" and model.config.entropy_rule == "global":
        with torch.no_grad():
            h = entropy(model.entropy_model(input_ids=ids))[:, 1:]  # type: ignore[misc]
        model.config = model.config.replace(entropy_threshold=float(h.median()) + 1e-4)
    return model


@pytest.mark.parametrize("overrides", CASES, ids=["global", "monotonic", "fixed"])
def test_causal_and_step_matches_forward(overrides: dict[str, Any]) -> None:
    ids = byte_ids(4, 2, 14)
    model = with_mixed_threshold(tiny(**overrides), ids)
    with torch.no_grad():
        full = model(ids)
        assert len(torch.unique(full.patch_ids[0])) not in (1, 14)  # real patches: neither one nor every byte
        for t in (2, 6, 10):
            moved = ids.clone()
            moved[:, t + 1 :] = byte_ids(5, 2, 14)[:, t + 1 :]
            out = model(moved)
            torch.testing.assert_close(out.logits[:, : t + 1], full.logits[:, : t + 1], atol=1e-5, rtol=1e-5)
            assert torch.equal(out.patch_ids[:, : t + 1], full.patch_ids[:, : t + 1])
        for max_len in (None, 14):
            state = model.init_state(2, max_len=max_len)
            first, state = model.step(ids[:, :5], state)
            rest = [model.step(ids[:, i : i + 1], state)[0] for i in range(5, 14)]
            logits = torch.cat([first.logits, *(r.logits for r in rest)], dim=1)
            patch_ids = torch.cat([first.patch_ids, *(r.patch_ids for r in rest)], dim=1)
            torch.testing.assert_close(logits, full.logits, atol=1e-4, rtol=1e-4)
            assert torch.equal(patch_ids, full.patch_ids)


def test_generate_greedy_matches_forward_argmax() -> None:
    model = tiny()
    prompt = byte_ids(6, 1, 5)
    out = model.generate(prompt, 4)
    with torch.no_grad():
        again = model(out).logits[:, 4:-1].argmax(-1)
    assert torch.equal(out[:, 5:], again)


def test_config_errors() -> None:
    with pytest.raises(edifice.ConfigError, match="patching"):
        edifice.config("byte_latent_transformer", patching="bpe")
    with pytest.raises(edifice.ConfigError, match="hash_sizes"):
        edifice.config("byte_latent_transformer", hash_sizes=())
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("byte_latent_transformer", byte_dim=30, n_heads=4)
    hf = hf_blt()
    hf.config.encoder_config.cross_attn_all_layers = True
    with pytest.raises(edifice.CheckpointError, match="cross_attn_all_layers"):
        from_transformers(hf)
