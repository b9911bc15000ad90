"""Regressions the registry-wide fuzzer (tests/test_fuzz.py) found in edifice-attention configs."""

from __future__ import annotations

import pytest

import edifice


@pytest.mark.parametrize("name", ["attention", "gqa", "decoder_only"])
def test_rope_base_and_activation_are_validated(name: str) -> None:
    tiny = edifice.get_spec(name).tiny
    with pytest.raises(edifice.ConfigError, match=r"field 'rope_base'=0\.5 must be > 1"):
        edifice.config(name, **tiny, rope_base=0.5)
    with pytest.raises(edifice.ConfigError, match=r"field 'activation'='' is not an activation"):
        edifice.config(name, **tiny, activation="")


def test_linear_attention_feature_map_is_an_activation() -> None:
    with pytest.raises(edifice.ConfigError, match=r"field 'feature_map'='' is not an activation"):
        edifice.config("retnet", **edifice.get_spec("retnet").tiny, feature_map="")


def test_retnet_odd_key_size_error_names_d_model() -> None:
    with pytest.raises(edifice.ConfigError, match=r"key size per head of 1 \(d_model=2\)"):
        edifice.config("retnet", **{**edifice.get_spec("retnet").tiny, "d_model": 2})
