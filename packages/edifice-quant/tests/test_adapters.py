"""Tests of the LoRA and DoRA adapters: parity with Hugging Face peft, merge/unmerge, accounting, save/load.

peft (``LoraConfig``, ``get_peft_model``) is the independent reference: the same base weights, peft's adapter
weights copied into ours through :func:`from_peft` (from the live model and from its ``save_pretrained`` directory),
then outputs, gradients and merged weights compared in fp32.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import edifice
from edifice.testing import signature
from edifice_quant.adapters import (
    DoRALinear,
    LoRALinear,
    adapter_layers,
    apply_adapter,
    from_peft,
    load_adapter,
    merge,
    save_adapter,
    trainable_parameters,
    unmerge,
)

peft = pytest.importorskip("peft")

CLOSE = {"atol": 1e-6, "rtol": 1e-5}


def base_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8, bias=False), nn.GELU(), nn.Linear(8, 5))


def peft_model(base: nn.Module, dora: bool, seed: int = 1) -> nn.Module:
    """peft's adapters on a copy of ``base`` with every adapter weight random (peft starts B at zero)."""
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0", "2", "4"], use_dora=dora)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def x(seed: int = 2) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_outputs_gradients_and_merged_weights_equal_peft(method: str) -> None:
    dora = method == "dora"
    base = base_model()
    reference = peft_model(base, dora)
    ours = copy.deepcopy(base)
    assert from_peft(ours, reference) == ["0", "2", "4"]
    assert all(layer.method == method for layer in adapter_layers(ours).values())
    inputs = x()
    torch.testing.assert_close(ours.eval()(inputs), reference(inputs), **CLOSE)

    # gradients of the adapter weights agree too (DoRA: the column norm is a constant in the backward pass, §4.3)
    ours(inputs).square().sum().backward()
    reference(inputs).square().sum().backward()
    peft_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    for name, layer in adapter_layers(ours).items():
        prefix = f"base_model.model.{name}."
        torch.testing.assert_close(layer.lora_A.grad, peft_grads[prefix + "lora_A.default.weight"], **CLOSE)
        torch.testing.assert_close(layer.lora_B.grad, peft_grads[prefix + "lora_B.default.weight"], **CLOSE)
        if dora:
            key = prefix + "lora_magnitude_vector.default.weight"
            torch.testing.assert_close(layer.magnitude.grad, peft_grads[key], **CLOSE)

    merge(ours)
    merged_reference = reference.merge_and_unload()
    for name in ("0", "2", "4"):
        torch.testing.assert_close(
            ours.get_submodule(name).weight, merged_reference.get_submodule(name).weight, **CLOSE
        )
    torch.testing.assert_close(ours(inputs), merged_reference(inputs), **CLOSE)


@signature("lora")
def test_lora_equals_peft() -> None:
    test_outputs_gradients_and_merged_weights_equal_peft("lora")


@signature("dora")
def test_dora_equals_peft() -> None:
    test_outputs_gradients_and_merged_weights_equal_peft("dora")


@pytest.mark.parametrize("dora", [False, True])
def test_from_peft_reads_the_saved_adapter_format(tmp_path: Path, dora: bool) -> None:
    base = base_model()
    reference = peft_model(base, dora)
    reference.save_pretrained(tmp_path)
    ours = copy.deepcopy(base)
    from_peft(ours, tmp_path)
    assert isinstance(ours[0], DoRALinear if dora else LoRALinear) and ours[0].scaling == 2.0
    torch.testing.assert_close(ours.eval()(x()), reference(x()), **CLOSE)


def test_from_peft_state_dict_needs_alpha() -> None:
    state = peft.get_peft_model_state_dict(peft_model(base_model(), False))
    with pytest.raises(ValueError, match="alpha="):
        from_peft(base_model(), state)
    ours = base_model()
    from_peft(ours, state, alpha=6)
    assert ours[2].rank == 3 and ours[2].scaling == 2.0


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_starts_as_the_base_model_and_unmerge_is_exact(method: str) -> None:
    base = base_model()
    model = copy.deepcopy(base)
    apply_adapter(model, method, targets=["0", "4"], rank=2, alpha=4.0)
    torch.testing.assert_close(model(x()), base(x()), atol=1e-6, rtol=0)  # B = 0 at init
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_()
    adapted = model(x())
    merge(model)
    assert not torch.equal(model[0].weight, original["0.weight"])
    torch.testing.assert_close(model(x()), adapted, atol=1e-5, rtol=0)
    unmerge(model)
    for n, p in model.named_parameters():
        if "lora_B" not in n:
            assert torch.equal(p, original[n]), n  # bit for bit: the kept copy, nothing subtracted
    assert torch.equal(model(x()), adapted)


def test_trainable_parameter_accounting_and_frozen_base() -> None:
    model = base_model()
    total = trainable_parameters(model).total
    apply_adapter(model, "dora", targets=["*"], rank=2)
    count = trainable_parameters(model)
    # per layer: A [2, d_in] + B [d_out, 2] + m [d_out]
    expected = sum(2 * i + o * 2 + o for i, o in ((6, 8), (8, 8), (8, 5)))
    assert count.trainable == expected and count.total == total + expected
    assert not model[0].weight.requires_grad and not model[0].bias.requires_grad


def test_save_and_load_the_adapter_alone(tmp_path: Path) -> None:
    model = base_model()
    apply_adapter(model, "lora", targets=["[04]"], rank=3, alpha=5.0, dropout=0.1)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_()
    path = tmp_path / "adapter.safetensors"
    save_adapter(model, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["0.lora_A", "0.lora_B", "4.lora_A", "4.lora_B"]
    fresh = base_model()
    assert load_adapter(fresh, path) == ["0", "4"]
    assert fresh[4].options == {"rank": 3, "alpha": 5.0, "dropout": 0.1}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(model.eval()(x()), fresh.eval()(x()))


def test_adapts_an_edifice_decoder_by_module_path_like_peft() -> None:
    base = edifice.build("decoder_only", **edifice.get_spec("decoder_only").tiny).eval()
    config = peft.LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)
    reference = peft.get_peft_model(copy.deepcopy(base), config).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ours = copy.deepcopy(base)
    assert apply_adapter(ours, "dora", targets=["*.q_proj", "*.v_proj", "*.down_proj"], rank=2, alpha=3) == [
        f"layers.{i}.{m}" for i in range(2) for m in ("mixer.q_proj", "mixer.v_proj", "ffn.down_proj")
    ]
    from_peft(ours, reference)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(input_ids=ids), reference(input_ids=ids), **CLOSE)
    assert trainable_parameters(ours).trainable == sum(p.numel() for p in reference.parameters() if p.requires_grad)


def test_merge_refuses_a_tied_weight() -> None:
    model = base_model()
    shared = nn.Linear(8, 5)
    shared.weight = model[4].weight
    holder = nn.ModuleDict({"net": model, "tied": shared})
    apply_adapter(holder, "lora", targets=["net.4"])
    with pytest.raises(ValueError, match="tied"):
        merge(holder)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown adapter method 'lorra'"):
        apply_adapter(base_model(), "lorra", targets=["0"])
    with pytest.raises(ValueError, match=r"match no nn\.Linear"):
        apply_adapter(base_model(), "lora", targets=["*.q_proj"])
    with pytest.raises(ValueError, match="rank must be a positive int"):
        apply_adapter(base_model(), "lora", targets=["0"], rank=0)
    with pytest.raises(ValueError, match="no adapter layers"):
        merge(base_model())
    with pytest.raises(ValueError, match="rank"):
        edifice.build("dora", rank=0)
