"""Configs and specs of attention, gqa and decoder_only: defaults, aliases, validation, torch-free listing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import edifice
from edifice import ConfigError
from edifice_attention.configs.attention import AttentionConfig
from edifice_attention.configs.decoder_only import DecoderOnlyConfig
from edifice_attention.configs.gqa import GQAConfig

NAMES = ("attention", "decoder_only", "gqa")


def test_plugin_and_configs_import_no_torch() -> None:
    code = textwrap.dedent(
        """
        import sys, edifice
        import edifice_attention.configs.attention, edifice_attention.configs.gqa
        assert {"attention", "gqa"} <= set(edifice.list_architectures(family="attention"))
        edifice.info("decoder_only"); edifice.config("gqa", num_heads=8)
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_each_entry_has_its_paper_defaults() -> None:
    attention, gqa, llama = edifice.config("attention"), edifice.config("gqa"), edifice.config("decoder_only")
    assert isinstance(attention, AttentionConfig)
    assert isinstance(gqa, GQAConfig)
    assert (attention.norm_position, attention.norm, attention.ffn, attention.activation) == (
        "post",
        "layernorm",
        "mlp",
        "relu",
    )
    assert attention.positional == "sinusoidal"
    assert attention.scale_embeddings
    assert attention.kv_heads == 4
    assert gqa.kv_heads == 2
    assert gqa.n_heads == 4
    assert isinstance(llama, DecoderOnlyConfig)
    assert (llama.norm_position, llama.norm, llama.ffn, llama.positional) == ("pre", "rmsnorm", "swiglu", "rope")


def test_attention_is_multi_head_by_registry_name() -> None:
    with pytest.raises(ConfigError, match="fixed"):
        edifice.config("attention", n_kv_heads=2)
    with pytest.raises(ConfigError, match="use 'gqa'"):
        AttentionConfig(n_kv_heads=2)
    assert edifice.config("attention", num_heads=8).kv_heads == 8


def test_original_option_names_are_aliases() -> None:
    cfg = edifice.config(
        "decoder_only",
        hidden_size=48,
        num_layers=3,
        num_heads=6,
        num_kv_heads=2,
        embed_dim=10,
        intermediate_size=96,
        rope_theta=500.0,
        window_size=5,
    )
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_in) == (48, 3, 6, 2, 10)
    assert (cfg.d_ff, cfg.rope_base, cfg.window) == (96, 500.0, 5)


def test_derived_sizes() -> None:
    assert DecoderOnlyConfig(d_model=64).ffn_hidden == 176  # ceil(8/3 * 64 / 8) * 8
    assert DecoderOnlyConfig(d_model=64, ffn="mlp").ffn_hidden == 256
    assert DecoderOnlyConfig(d_model=64, n_heads=4, head_dim=20).head_size == 20


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_heads": 5}, "n_heads"),
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"ffn": "swiglo"}, "ffn"),
        ({"positional": "sinusoidal", "rotary_dim": 8}, "rotary_dim"),
        ({"rotary_dim": 7}, "rotary_dim"),
        ({"n_experts": 2, "moe_top_k": 3}, "moe_top_k"),
        ({"window": 0}, "window"),
        ({"positional": "none", "rope_scaling": {"kind": "linear", "factor": 2.0}}, "rope_scaling"),
    ],
)
def test_invalid_configs_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'"):
        edifice.config("decoder_only", **overrides)


def test_torch_side_fields_are_config_errors_at_build() -> None:
    with pytest.raises(ConfigError, match="rope_scaling"):
        edifice.build("decoder_only", rope_scaling={"kind": "yarn", "factor": 2.0})  # no original length
    with pytest.raises(ConfigError, match=r"'activation'.*Did you mean 'relu'"):
        edifice.build("attention", activation="rleu")


@pytest.mark.parametrize("name", NAMES)
def test_tiny_configs_are_tiny(name: str) -> None:
    spec = edifice.get_spec(name)
    model = edifice.build(name, **spec.tiny)
    assert sum(p.numel() for p in model.parameters()) <= 50_000
    assert model.config.n_layers <= 2
    assert spec.causal
    assert spec.stateful
    assert spec.variable_length
    assert spec.alias_of in (None, "decoder_only")
