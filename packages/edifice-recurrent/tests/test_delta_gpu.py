"""GPU parity: each delta-rule mixer against flash-linear-attention's own layer (its Triton kernels), weights mapped.

fla's layers run only on CUDA (Triton), so this is the independent pip implementation checked on the GPU machine;
on CPU the signature tests check the same layers against fla's naive recurrences instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from edifice_recurrent._delta_layers import DeltaMixer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fla's layers run on Triton)"),
]

D, H, K = 64, 2, 32


def fla_layers() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("fla.layers")


def load_from_fla(mixer: DeltaMixer, layer: nn.Module) -> None:
    """Copy an fla layer's weights into ``mixer`` (names match except the convolutions and the output norm)."""
    source = layer.state_dict()
    target = mixer.state_dict()
    for name in target:
        if name.startswith("convs."):
            index, leaf = name.split(".")[1:]
            conv = ("q_conv1d", "k_conv1d", "v_conv1d")[int(index)]
            value = source[f"{conv}.{leaf}"]
            target[name] = value.squeeze(1) if leaf == "weight" else value  # [C, 1, K] -> [C, K]
        elif name == "o_norm_weight":
            target[name] = source["o_norm.weight"]
        else:
            target[name] = source[name]
    mixer.load_state_dict(target)


CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name: (fla class, fla kwargs, DeltaMixer kwargs)
    "delta_net": ("DeltaNet", {"use_gate": True}, {"use_gate": True}),
    "gated_delta_net": (
        "GatedDeltaNet",
        {"head_dim": K, "expand_v": 2, "use_gate": True},
        {"gated": True, "use_gate": True},
    ),
    "delta_product": (
        "GatedDeltaProduct",
        {"head_dim": K, "expand_v": 1, "num_householder": 2, "use_forget_gate": True, "allow_neg_eigval": True},
        {"n_householder": 2, "gated": True, "use_gate": True, "allow_neg_eigval": True},
    ),
}


@pytest.mark.parametrize("kernel", ["fused_recurrent", "chunk"])
@pytest.mark.parametrize("case", list(CASES))
def test_mixer_matches_fla_layer_on_gpu(case: str, kernel: str) -> None:
    # fla's chunk kernels take bf16 only: there both sides see the same bf16-rounded weights and input, fla runs in
    # bf16 and the mixer in fp32, and the bf16 tolerance applies; the fused recurrent kernels are compared in fp32.
    cls_name, fla_kwargs, mine = CASES[case]
    torch.manual_seed(0)
    dtype = torch.bfloat16 if kernel == "chunk" else torch.float32
    layer = getattr(fla_layers(), cls_name)(hidden_size=D, num_heads=H, mode=kernel, **fla_kwargs)
    layer = layer.cuda().to(dtype).eval()
    mixer = DeltaMixer(D, H, K, int(K * fla_kwargs.get("expand_v", 1)), **mine).cuda()
    load_from_fla(mixer, layer)
    x = torch.randn(2, 100, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)).to(dtype)
    with torch.no_grad():
        want = layer(x)[0].float()  # T = 100 > 64, so fla runs the kernel asked for
        got = mixer(x.float())
    error = float((got - want).norm() / want.norm())
    assert error <= (2e-2 if kernel == "chunk" else 1e-4), error
