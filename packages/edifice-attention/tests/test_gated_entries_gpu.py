"""GPU parity: ``gsa``, ``kda``, ``retnet_v2`` and ``gla_v2`` mixers against flash-linear-attention's own layers.

fla's layers run only through Triton, so this is where the independent pip implementation itself is checked (on CPU
the signature tests check the same mixers against fla's naive references): ``GatedSlotAttention``,
``KimiDeltaAttention``, ``YOCOGatedRetention`` and ``GatedLinearAttention(use_short_conv=True)``, each with its
weights perturbed and mapped into our mixer by the entry's converter map, in each of fla's modes (T = 100 > 64, so
fla runs the mode asked for; T = 40 takes its fused recurrent kernel). Run on the GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import edifice
from edifice_attention._linear_attention import map_fla_state_dict
from edifice_attention.retnet_v2 import map_yoco_gated_retention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fla's layers run on Triton)"),
]

D, H, EPS = 64, 2, 1e-6
Weights = dict[str, torch.Tensor]


def fla_layer_keys(w: Weights) -> Weights:
    """An fla layer's keys as our mixer's, through the family converter's key map."""
    mapped = map_fla_state_dict({f"model.layers.0.attn.{k}": v for k, v in w.items()})
    return {k.removeprefix("layers.0.mixer."): v for k, v in mapped.items()}


# arch: (fla layer class, its keyword arguments, its modes, our build overrides, weight map)
CASES: dict[str, tuple[str, dict[str, Any], tuple[str, ...], dict[str, Any], Callable[[Weights], Weights]]] = {
    "gsa": (
        "GatedSlotAttention",
        {"num_heads": H, "num_slots": 16},
        ("chunk",),
        {"num_slots": 16},
        fla_layer_keys,
    ),
    "kda": (
        "KimiDeltaAttention",
        {"num_heads": H, "head_dim": D // H},
        ("chunk", "fused_recurrent"),
        {},
        fla_layer_keys,
    ),
    "retnet_v2": (
        "YOCOGatedRetention",
        {"num_heads": H},
        ("chunk", "fused_recurrent"),
        {},
        lambda w: map_yoco_gated_retention(w, H),
    ),
    "gla_v2": (
        "GatedLinearAttention",
        {"num_heads": H, "use_short_conv": True},
        ("chunk", "fused_chunk", "fused_recurrent"),
        {},
        fla_layer_keys,
    ),
}


@pytest.mark.parametrize("length", [100, 40], ids=["T100", "T40"])
@pytest.mark.parametrize(("arch", "mode"), [(a, m) for a, (_, _, modes, _, _) in CASES.items() for m in modes])
def test_mixer_matches_fla_layer_on_gpu(arch: str, mode: str, length: int) -> None:
    """fp32 against fla's kernels (relative error <= 1e-3), whole sequence and prefill + single steps."""
    cls_name, kwargs, _, overrides, mapping = CASES[arch]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = pytest.importorskip("fla.layers")
        layer = getattr(layers, cls_name)(hidden_size=D, mode=mode, norm_eps=EPS, layer_idx=0, **kwargs)
    layer = layer.cuda().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():  # unit norm gains and zero biases would hide a wrong mapping
            p.add_(0.1 * torch.randn_like(p))
    model: Any = edifice.build(arch, d_model=D, n_layers=1, n_heads=H, norm_eps=EPS, **overrides)
    mixer = model.layers[0].mixer.cuda().eval()
    mixer.load_state_dict(mapping({k: v.float() for k, v in layer.state_dict().items()}), strict=True)
    x = torch.randn(2, length, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    with torch.no_grad():
        want = layer(x)[0].float()
        got = mixer(x)
        state = mixer.init_state(2)
        steps = [mixer(x[:, :7], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(7, length)]
    for what, out in (("forward", got), ("stepped", torch.cat(steps, 1))):
        err = float((out - want).norm() / want.norm())
        assert err <= 1e-3, f"{arch} ({mode}, T={length}, {what}): relative error {err:.2e} > 1e-3"
