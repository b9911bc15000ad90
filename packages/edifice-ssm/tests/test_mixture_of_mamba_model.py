"""mixture_of_mamba: one modality is Mamba, each token uses only its modality's weights, dispatch, config, inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing.tol import FP32, assert_close
from edifice_ssm._hybrid_mamba import ModalityLinear, ModalityRoute
from edifice_ssm.mamba import Mamba
from edifice_ssm.mixture_of_mamba import MixtureOfMamba

TINY = {"d_model": 16, "n_layers": 2, "d_in": 5, "d_state": 4, "d_conv": 3, "n_modalities": 2}
SPLIT = ("in_proj", "x_proj", "dt_proj", "out_proj")


def _build(seed: int = 0, **overrides: object) -> MixtureOfMamba:
    torch.manual_seed(seed)
    model = edifice.build("mixture_of_mamba", **{**TINY, **overrides})
    assert isinstance(model, MixtureOfMamba)
    return model.eval()


def _x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, TINY["d_in"], generator=torch.Generator().manual_seed(seed))


def test_one_modality_is_mamba_exactly() -> None:
    mom = _build(seed=2, n_modalities=1, bias=True)
    fields = {
        k: v for k, v in mom.config.to_dict().items() if k not in ("arch", "scan", "n_modalities", "split_projections")
    }
    mamba = edifice.build("mamba", **fields)
    assert isinstance(mamba, Mamba)
    weights = {}
    for name, tensor in mom.state_dict().items():
        if any(f"mixer.{p}." in name for p in SPLIT):
            tensor = tensor[0]  # the modality axis of size one
        weights[name] = tensor
    mamba.load_state_dict(weights, strict=True)
    x = _x(2, 9, seed=3)
    with torch.no_grad():
        assert_close(mom(x=x), mamba.eval()(x=x), FP32)
    with pytest.raises(edifice.InputError, match="input 'modality_mask' is taken only when n_modalities > 1"):
        mom(x=x, modality_mask=torch.zeros(2, 9, dtype=torch.long))


def test_each_token_uses_only_its_own_modalitys_projections() -> None:
    model = _build(seed=4)
    x = _x(2, 8, seed=5)
    text_only = torch.zeros(2, 8, dtype=torch.long)
    mixed = text_only.clone()
    mixed[:, 5:] = 1  # modality 1 from position 5 on
    with torch.no_grad():
        base_text, base_mixed = model(x=x, modality_mask=text_only), model(x=x, modality_mask=mixed)
        for layer in model.layers:  # change every projection of modality 1
            for name in SPLIT:
                getattr(layer.mixer, name).weight[1].normal_()
        new_text, new_mixed = model(x=x, modality_mask=text_only), model(x=x, modality_mask=mixed)
    assert torch.equal(new_text, base_text)  # a modality-0-only sequence never touches modality 1
    assert torch.equal(new_mixed[:, :5], base_mixed[:, :5])  # nor do the tokens before the first modality-1 token
    assert not torch.allclose(new_mixed[:, 5:], base_mixed[:, 5:])
    # Gradients: modality-0-only inputs give modality 1's weights exactly zero gradient.
    model.train()
    model(x=x, modality_mask=text_only).square().sum().backward()
    mixer = model.layers[0].mixer
    assert not mixer.in_proj.weight.grad[1].any() and mixer.in_proj.weight.grad[0].any()
    assert mixer.conv1d.weight.grad.any() and mixer.A_log.grad.any()  # shared parameters learn from every token


def test_sparse_dispatch_equals_dense_evaluation() -> None:
    torch.manual_seed(6)
    linear = ModalityLinear(3, 5, 7, bias=True)
    x = torch.randn(2, 9, 5)
    modality = torch.randint(0, 3, (2, 9))
    sparse = ModalityRoute(modality, 3)
    assert sparse.order is not None and sum(sparse.sizes or []) == 18
    dense = ModalityRoute(modality, 3)
    dense.order, dense.sizes = None, None
    want = torch.einsum("bti,btoi->bto", x, linear.weight[modality]) + linear.bias[modality]
    assert_close(linear(x, sparse), want, FP32)
    assert_close(linear(x, dense), want, FP32)
    with torch.device("meta"):
        meta = ModalityRoute(torch.zeros(2, 9, dtype=torch.long), 3)
    assert meta.order is None


def test_reset_parameters_draws_mamba_init_per_modality() -> None:
    model = _build(seed=7, d_model=64, n_layers=4, d_state=8)
    mixer = model.layers[0].mixer
    E, N = 128, 8
    assert mixer.A_log.shape == (E, N) and mixer.D.shape == (E,)  # shared
    assert torch.allclose(mixer.A_log.exp(), torch.arange(1, N + 1, dtype=torch.float32).expand(E, N))
    dt = F.softplus(mixer.dt_proj.bias)  # (M, E)
    assert dt.shape == (2, E) and not torch.equal(dt[0], dt[1])
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert abs(dt.log().mean().item() - (math.log(0.001) + math.log(0.1)) / 2) < 0.4
    bound = E**-0.5 / math.sqrt(4)  # out_proj: Linear's bound over sqrt(n_layers)
    w = mixer.out_proj.weight
    assert w.shape == (2, 64, E) and w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.9 * bound


def test_config_validates_and_accepts_original_option_names() -> None:
    config = edifice.config("mixture_of_mamba", num_modalities=3, state_size=8, expand_factor=3, conv_size=2)
    assert (config.n_modalities, config.d_state, config.expand, config.d_conv) == (3, 8, 3, 2)
    with pytest.raises(edifice.ConfigError, match="n_modalities"):
        edifice.config("mixture_of_mamba", n_modalities=0)
    with pytest.raises(edifice.ConfigError, match="split_projections"):
        edifice.config("mixture_of_mamba", split_projections=("in_proj", "conv1d"))
    with pytest.raises(edifice.ConfigError, match="split_projections"):
        edifice.config("mixture_of_mamba", split_projections=("in_proj", "in_proj"))


def test_bad_modality_masks_raise_input_errors() -> None:
    model = _build()
    x = _x(2, 6)
    with pytest.raises(edifice.InputError, match="input 'modality_mask' is required"):
        model(x=x)
    with pytest.raises(edifice.InputError, match=r"modality_mask' expected values in \[0, 2\)"):
        model(x=x, modality_mask=torch.full((2, 6), 2))
    with pytest.raises(edifice.InputError, match=r"modality_mask' expected \[B, T\]"):
        model(x=x, modality_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(edifice.InputError, match="modality_mask' expected dtype int64"):
        model(x=x, modality_mask=torch.zeros(2, 6))
    # step takes the new tokens' modalities too; without them it cannot know which projections to use.
    state = model.init_state(2)
    with pytest.raises(edifice.InputError, match="input 'modality_mask' is required"):
        model.step(x[:, :1], state)
    with pytest.raises(ValueError, match="modality"):
        model.layers[0].mixer(torch.randn(2, 3, 16))
