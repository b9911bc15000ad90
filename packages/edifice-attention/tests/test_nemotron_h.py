"""nemotron_h: parity with transformers' NemotronH (whole and decoded), the layer pattern, the mamba2 block by name."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

import edifice
from edifice import CheckpointError, ConfigError, MissingDependency
from edifice.plugins import get_registry
from edifice.testing import redraw_parameters, signature
from edifice.testing.tol import FP32, SCAN, assert_close

transformers = pytest.importorskip("transformers")
NemotronHConfig, NemotronHForCausalLM = transformers.NemotronHConfig, transformers.NemotronHForCausalLM
NemotronHModel = transformers.NemotronHModel

#: The Mamba-2 layers come from edifice-ssm's ``mamba2`` block; without it only the missing-dependency test runs.
needs_ssm = pytest.mark.skipif(
    importlib.util.find_spec("edifice_ssm") is None, reason='nemotron_h needs edifice-ssm: pip install "edifice[ssm]"'
)

VOCAB = 40
#: Every layer kind, and each kind after each other one: Mamba-2 -> MLP -> attention -> MLP -> Mamba-2 -> attention.
PATTERN = "M-*-M*"


def _hf_config(**overrides: Any) -> Any:
    fields = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "hybrid_override_pattern": PATTERN,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "intermediate_size": 48,
        "ssm_state_size": 8,
        "mamba_num_heads": 8,
        "mamba_head_dim": 8,
        "n_groups": 2,
        "conv_kernel": 3,
        "expand": 2,
        "chunk_size": 4,
        "max_position_embeddings": 32,
        **overrides,
    }
    config = NemotronHConfig(**fields)
    config._attn_implementation = "eager"
    return config


def _redraw(model: Any, seed: int) -> Any:
    redraw_parameters(model, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mixer.dt_bias"):
                # Steps Δ = softplus(dt + dt_bias) of order one: strong decays (an SSD without decay is far off), and
                # never below time_step_min, where transformers' chunked path (only) clamps Δ (see the model doc).
                p.copy_(torch.empty(p.shape).uniform_(-1.0, 1.0, generator=gen))
    return model.eval()


def _nemotron(seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    return _redraw(NemotronHForCausalLM(_hf_config(**overrides)), seed)


def _ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


VARIANTS = {
    "gqa": {},
    "tied-mha-biases": {"tie_word_embeddings": True, "num_key_value_heads": 4, "mlp_bias": True, "use_bias": True},
    "one-group-wide-heads": {"n_groups": 1, "mamba_num_heads": 4, "mamba_head_dim": 16, "head_dim": 16},
}


@needs_ssm
@signature("nemotron_h")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nemotron_h_matches_transformers(variant: str) -> None:
    hf = _nemotron(**VARIANTS[variant])
    model = edifice.convert("transformers.NemotronHForCausalLM", hf).eval()
    assert model.layer_pattern == PATTERN
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        assert_close(model(input_ids=ids), expected, FP32, name="logits")
    assert_close(_stepped(model, ids, prefill=5), expected, SCAN, name="decoded logits")


def _stepped(model: Any, ids: torch.Tensor, *, prefill: int) -> torch.Tensor:
    """Logits of a prefill then one token at a time through a static cache."""
    with torch.no_grad():
        state = model.init_state(ids.shape[0], max_len=ids.shape[1])
        out = [model.step(ids[:, :prefill], state)[0]]
        out += [model.step(ids[:, t : t + 1], state)[0] for t in range(prefill, ids.shape[1])]
    return torch.cat(out, 1)


@needs_ssm
@signature("nemotron_h")
def test_decoding_matches_transformers_cache() -> None:
    """Prefill then single tokens, through the Mamba-2 conv/SSM states and the KV caches, on both sides."""
    hf = _nemotron(seed=1)
    model = edifice.convert("transformers.NemotronHForCausalLM", hf).eval()
    ids, prefill = _ids(length=10, seed=1), 4
    with torch.no_grad():
        whole = hf(ids).logits
        out = hf(ids[:, :prefill], use_cache=True)
        cache, expected = out.past_key_values, [out.logits]
        for t in range(prefill, ids.shape[1]):
            out = hf(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            expected.append(out.logits)
    assert_close(torch.cat(expected, 1), whole, SCAN, name="transformers decoded vs whole")
    assert_close(_stepped(model, ids, prefill=prefill), torch.cat(expected, 1), SCAN, name="decoded logits")


@needs_ssm
def test_backbone_converts_with_a_tied_head() -> None:
    torch.manual_seed(2)
    hf = _redraw(NemotronHModel(_hf_config()), seed=2)
    model = edifice.convert("transformers.NemotronHModel", hf).eval()
    assert model.config.tie_embeddings
    ids = _ids(seed=2)
    with torch.no_grad():
        expected = hf(ids).last_hidden_state @ hf.embeddings.weight.T
        assert_close(model(input_ids=ids), expected, FP32, name="logits")


@needs_ssm
def test_converts_from_config_dicts_current_and_original_names() -> None:
    hf = _nemotron(seed=3, n_groups=4, conv_kernel=2)
    current = edifice.convert("transformers.NemotronHForCausalLM", (hf.config.to_dict(), hf.state_dict()))
    legacy = {k: v for k, v in hf.config.to_dict().items() if k not in ("layers_block_type", "n_groups", "head_dim")}
    legacy.update(hybrid_override_pattern=PATTERN, mamba_n_groups=4, attention_head_dim=8)
    legacy["mamba_d_conv"] = legacy.pop("conv_kernel")
    original = edifice.convert("transformers.NemotronHForCausalLM", (legacy, hf.state_dict()))
    assert current.config == original.config
    assert (current.config.pattern, current.config.n_groups, current.config.d_conv) == (PATTERN, 4, 2)
    ids = _ids(seed=3)
    with torch.no_grad():
        assert_close(original.eval()(input_ids=ids), hf(ids).logits, FP32, name="logits")


@needs_ssm
@pytest.mark.parametrize("max_len", [None, 12], ids=["dynamic", "static"])
def test_step_reproduces_forward_over_every_layer_kind(max_len: int | None) -> None:
    tiny = {**edifice.get_spec("nemotron_h").tiny, "pattern": "M-*-", "n_layers": 4}
    torch.manual_seed(0)
    model = edifice.build("nemotron_h", **tiny).eval()
    x = torch.randn(2, 11, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(x=x)
        state = model.init_state(2, max_len=max_len)
        outs = [model.step(x[:, :5], state)[0]]
        outs += [model.step(x[:, t : t + 1], state)[0] for t in range(5, 11)]
    assert_close(torch.cat(outs, 1), full, SCAN, name="step vs forward")
    assert state.layers[1] is None and state.layers[3] is None  # MLP layers keep no state


@needs_ssm
def test_left_padding_gives_the_unpadded_result() -> None:
    torch.manual_seed(0)
    model = edifice.build("nemotron_h", **{**edifice.get_spec("nemotron_h").tiny, "pattern": "M-*-", "n_layers": 4})
    model.eval()
    x = torch.randn(1, 7, 12, generator=torch.Generator().manual_seed(4))
    padded = torch.cat([torch.randn(1, 3, 12), x], 1)
    mask = torch.tensor([[False] * 3 + [True] * 7])
    with torch.no_grad():
        assert_close(model(x=padded, attention_mask=mask)[:, 3:], model(x=x), FP32, name="left-padded")


def test_layer_pattern_from_attention_every_n_and_cycled() -> None:
    config = edifice.config("nemotron_h", n_layers=8, attention_every_n=4)
    assert config.layer_pattern == "M-M-M-*-"
    assert edifice.config("nemotron_h", n_layers=6, attention_every_n=1).layer_pattern == "*-*-*-"
    assert edifice.config("nemotron_h", n_layers=4, attention_every_n=0).layer_pattern == "M-M-"
    assert edifice.config("nemotron_h", n_layers=5, hybrid_override_pattern="M*-").layer_pattern == "M*-M*"


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"pattern.*has 'E'.*'M' Mamba-2"):
        edifice.config("nemotron_h", pattern="M-E-")
    with pytest.raises(ConfigError, match=r"pattern.*has 4 layers but n_layers=2"):
        edifice.config("nemotron_h", pattern="M-*-", n_layers=2)
    with pytest.raises(ConfigError, match="mamba_head_dim"):
        edifice.config("nemotron_h", d_model=16, mamba_head_dim=12)
    with pytest.raises(ConfigError, match="n_groups"):
        edifice.config("nemotron_h", d_model=16, mamba_head_dim=8, n_groups=3)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        edifice.config("nemotron_h", n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="activation"):
        edifice.config("nemotron_h", activation="relu3")
    # No Mamba-2 layer: its sizes are not checked (an all-attention pattern is a plain NoPE transformer).
    assert edifice.config("nemotron_h", n_layers=2, d_model=16, mamba_head_dim=12, pattern="*-").layer_pattern == "*-"


def test_missing_ssm_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = get_registry()
    blocks = registry.items("blocks")
    if "mamba2" in blocks:  # simulate an install without edifice-ssm
        monkeypatch.delitem(blocks, "mamba2")
        others = {k: r for k, r in registry.records.items() if r.distribution != "edifice-ssm"}
        monkeypatch.setattr(registry, "records", others)
    hint = r"nemotron_h: needs the block 'mamba2', .*: pip install \"edifice\[ssm\]\""
    with pytest.raises(MissingDependency, match=hint):
        edifice.build("nemotron_h", **edifice.get_spec("nemotron_h").tiny)
    # An all-attention pattern needs no Mamba-2 block, but the spec still declares it: the entry is one architecture.
    assert edifice.get_spec("nemotron_h").requires_blocks == ("mamba2",)


@needs_ssm
def test_converter_errors() -> None:
    with pytest.raises(CheckpointError, match=r"mixture-of-experts \('E'\)"):
        edifice.convert("transformers.NemotronHForCausalLM", (_hf_config(hybrid_override_pattern="M-E*"), {}))
    with pytest.raises(CheckpointError, match="mamba_num_heads \\* mamba_head_dim = 32 must equal"):
        edifice.convert("transformers.NemotronHForCausalLM", (_hf_config(mamba_num_heads=4), {}))
    with pytest.raises(ConfigError, match="time_step_limit"):
        edifice.convert("transformers.NemotronHForCausalLM", (_hf_config(time_step_limit=(0.001, 1.0)), {}))
    hf = _nemotron()
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra"):
        edifice.convert("transformers.NemotronHForCausalLM", (hf.config, {**hf.state_dict(), "model.extra.weight": 0}))
    # Multi-token-prediction weights are dropped, as transformers drops them.
    edifice.convert("transformers.NemotronHForCausalLM", (hf.config, {**hf.state_dict(), "mtp.layers.0.w": 0}))


@needs_ssm
def test_initialisation() -> None:
    model = edifice.build("nemotron_h", d_model=64, n_layers=16, pattern="M-*-", d_state=16).requires_grad_(False)
    mamba, attention, mlp = model.layers[0].mixer, model.layers[2].mixer, model.layers[1].mixer
    assert abs(float(attention.q_proj.weight.std()) - 0.02) < 0.002
    assert abs(float(mlp.up_proj.weight.std()) - 0.02) < 0.002
    # PyTorch's default (std = 1 / sqrt(3 fan_in)) scaled by 1 / sqrt(n_layers): the released code's rescaling.
    expected = (3 * mamba.out_proj.in_features) ** -0.5 / 16**0.5
    assert abs(float(mamba.out_proj.weight.std()) / expected - 1) < 0.1
    assert torch.all(mamba.D == 1)
