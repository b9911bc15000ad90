"""Signature tests: mamba, mamba_cumsum and mamba_hillis_steele against transformers' ``MambaForCausalLM``.

Weights are mapped by the registered converter; the reference runs its pure-PyTorch path (no ``mamba_ssm`` kernels).
Each entry is checked on a full forward, on a left-padded batch, and on prefill + token-by-token decoding against
the reference's full forward at every position -- so the selective scan, the convolution's carried state and the
norms all have to be right (CI also runs these under ``--edifice-mutate`` of each op they call).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import redraw_parameters, signature
from edifice.testing.tol import FP32, assert_close
from edifice_ssm.convert_mamba import map_mamba_state_dict

transformers = pytest.importorskip("transformers")
# Resolve the lazily imported classes once at collection, not inside a timed test.
HFMambaConfig, HFMambaForCausalLM, HFMambaModel = (
    transformers.MambaConfig,
    transformers.MambaForCausalLM,
    transformers.MambaModel,
)

VOCAB = 40
NAMES = ("mamba", "mamba_cumsum", "mamba_hillis_steele")


def _hf(seed: int = 0, cls: Any = None, **overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 16,
        "state_size": 4,
        "num_hidden_layers": 2,
        "conv_kernel": 3,
        "expand": 2,
        "time_step_rank": 3,
        "use_bias": True,
        "use_cache": False,
        **overrides,
    }
    torch.manual_seed(seed)
    model = (cls or HFMambaForCausalLM)(HFMambaConfig(**fields)).eval()
    # Every parameter redrawn (biases, gains and D included): a zero bias would hide a leak into padded positions.
    return redraw_parameters(model, seed=seed)


def _convert(name: str, hf: Any) -> Any:
    """``hf``'s weights in the Edifice entry ``name`` (the converter builds ``mamba``; the variants reload them)."""
    model = edifice.convert("transformers.MambaForCausalLM", hf)
    if name == "mamba":
        return model.eval()
    other = edifice.build(name, **{k: v for k, v in model.config.to_dict().items() if k not in ("arch", "scan")})
    other.load_state_dict(map_mamba_state_dict(hf.state_dict(), other.config))
    return other.eval()


def _ids(batch: int = 2, length: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _check_against_transformers(name: str) -> None:
    hf = _hf(seed=1)
    model = _convert(name, hf)
    ids = _ids()
    with torch.no_grad():
        want = hf(ids).logits  # (B, T, V)
        assert_close(model(input_ids=ids), want, FP32, name=f"{name}: forward vs transformers")
        # Left padding: the valid positions equal the unpadded run (transformers zeroes padded inputs likewise).
        pad = torch.zeros(2, 3, dtype=torch.long)
        mask = torch.cat([torch.zeros(2, 3, dtype=torch.bool), torch.ones_like(ids, dtype=torch.bool)], 1)
        padded = model(input_ids=torch.cat([pad, ids], 1), attention_mask=mask)
        assert_close(padded[:, 3:], want, FP32, name=f"{name}: left-padded vs transformers")
        # Prefill 5 tokens, then decode one at a time: each output equals the reference's at that position.
        state = model.init_state(2)
        outs = [model.step(ids[:, :5], state)[0]]
        outs += [model.step(ids[:, t : t + 1], state)[0] for t in range(5, ids.shape[1])]
        assert_close(torch.cat(outs, 1), want, FP32, name=f"{name}: prefill + decode vs transformers")


@signature("mamba")
def test_mamba_matches_transformers() -> None:
    _check_against_transformers("mamba")


@signature("mamba_cumsum")
def test_mamba_cumsum_matches_transformers() -> None:
    _check_against_transformers("mamba_cumsum")


@signature("mamba_hillis_steele")
def test_mamba_hillis_steele_matches_transformers() -> None:
    _check_against_transformers("mamba_hillis_steele")


def test_mamba_model_hidden_states_match() -> None:
    # transformers' MambaModel (no head): its last hidden state times the embedding gives our tied-head logits.
    hf = _hf(seed=2, cls=HFMambaModel, use_bias=False, use_conv_bias=False, time_step_rank="auto")
    model = edifice.convert("transformers.MambaModel", hf).eval()
    assert model.config.time_step_rank == 1 and not model.config.bias and not model.config.conv_bias
    ids = _ids(seed=3)
    with torch.no_grad():
        want = hf(ids).last_hidden_state @ hf.embeddings.weight.T
        assert_close(model(input_ids=ids), want, FP32)


def test_converter_accepts_a_config_dict_and_reports_unknown_keys() -> None:
    hf = _hf(seed=4)
    model = edifice.convert("transformers.MambaForCausalLM", (hf.config.to_dict(), hf.state_dict()))
    ids = _ids(seed=5)
    with torch.no_grad():
        assert_close(model.eval()(input_ids=ids), hf(ids).logits, FP32)
    bad = {**hf.state_dict(), "backbone.layers.0.mixer.unexpected": torch.zeros(1)}
    with pytest.raises(edifice.CheckpointError, match="unexpected"):
        edifice.convert("transformers.MambaForCausalLM", (hf.config, bad))


def test_converted_weights_are_copies() -> None:
    hf = _hf(seed=6)
    model = edifice.convert("transformers.MambaForCausalLM", hf)
    with torch.no_grad():
        model.layers[0].mixer.A_log.add_(1.0)
    assert not torch.equal(model.layers[0].mixer.A_log, hf.backbone.layers[0].mixer.A_log)
