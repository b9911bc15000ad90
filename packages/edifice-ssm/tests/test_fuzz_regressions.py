"""Regressions the registry-wide fuzzer (tests/test_fuzz.py) found in edifice-ssm configs and models."""

from __future__ import annotations

import pytest
import torch

import edifice


def test_bimamba_chunked_forward_backpropagates_through_the_carried_state() -> None:
    # The Mamba mixer writes its state in place; chunking a training forward (chunk_size < T) made autograd see a
    # saved tensor change. It now computes from a copy while autograd records (edifice_ssm.mamba._saved_copy).
    tiny = edifice.get_spec("bimamba").tiny
    torch.manual_seed(0)
    chunked = edifice.build("bimamba", **{**tiny, "chunk_size": 3})
    whole = edifice.build("bimamba", **tiny)
    whole.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 8, tiny["d_in"], requires_grad=True)
    chunked(x=x).square().sum().backward()
    grad, x.grad = x.grad, None
    whole(x=x).square().sum().backward()
    torch.testing.assert_close(grad, x.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["hymba", "ss_transformer", "striped_hyena"])
def test_rope_base_must_exceed_one(name: str) -> None:
    with pytest.raises(edifice.ConfigError, match=r"field 'rope_base'=1\.0 must be > 1"):
        edifice.config(name, **edifice.get_spec(name).tiny, rope_base=1.0)


@pytest.mark.parametrize("name", ["h3", "striped_hyena", "hyena", "hyena_v2", "s4", "s4d", "s5"])
def test_unknown_activation_is_a_config_error(name: str) -> None:
    with pytest.raises(edifice.ConfigError, match=r"field 'activation'='no_such' is not an activation"):
        edifice.config(name, **edifice.get_spec(name).tiny, activation="no_such")


@pytest.mark.parametrize("name", ["mamba3", "mamba_ssd"])
def test_head_groups_error_names_d_model(name: str) -> None:
    with pytest.raises(edifice.ConfigError, match=r"field 'n_groups'=2 .* \(d_model=4\)"):
        edifice.config(name, **{**edifice.get_spec(name).tiny, "d_model": 4})
