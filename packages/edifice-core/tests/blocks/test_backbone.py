"""SequenceBackbone: embedding, pooling, tied head, checkpointing, padding and the stateful protocol.

Two toy families subclass it by supplying only ``build_layer``: an attention one (TransformerBlock + Attention +
RoPE) and a recurrent one whose mixer keeps a running sum as its state, as an SSM family would.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
import torch
import torch._dynamo  # checkpoint() imports it lazily; paying that once here keeps the test fast
from torch import Tensor, nn

import edifice
from edifice import ArchConfig, ArchSpec, hookimpl
from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceBackbone, SequenceOutput, SequenceState
from edifice.blocks.ffn import FeedForward
from edifice.blocks.moe import MoEFeedForward
from edifice.blocks.rope import RotaryEmbedding
from edifice.blocks.transformer import TransformerBlock
from edifice.outputs import model_output
from edifice.plugins import get_registry
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs
from edifice.testing.tol import FP32, SCAN, assert_close

# Import strings need a dotted module name; pytest's importlib mode may give this module a path-like one.
_MODULE = "_edifice_test_backbone"
sys.modules[_MODULE] = sys.modules[__name__]


@dataclasses.dataclass(kw_only=True)
class ToyConfig(SequenceConfig):
    """Toy config: which mixer, and whether the FFN is a mixture of experts."""

    arch: str = edifice.field("toy_attention_backbone", "Registry name.")
    d_model: int = edifice.field(8, "Width.")
    mixer: str = edifice.field("attention", "'attention' or 'running_sum'.")
    moe: bool = edifice.field(False, "Use a mixture-of-experts FFN.")


@model_output
class RunningSumState:
    """Sum of the valid inputs seen so far, ``[B, D]``."""

    total: Tensor


class RunningSum(nn.Module):
    """``y_t = W (Σ_{s <= t, valid} x_s)``: a recurrent mixer with a constant-size state updated in place."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, positions: Any = None, state: Any = None) -> Tensor:
        if mask is not None:
            x = x * mask[..., None]
        total = x.cumsum(dim=1)  # (B, T, D)
        if state is not None:
            total = total + state.total[:, None]
            state.total = total[:, -1]
        out: Tensor = self.proj(total)
        return out

    def init_state(self, batch_size: int, *, device: Any = None, dtype: Any = None, **_: Any) -> RunningSumState:
        return RunningSumState(total=torch.zeros(batch_size, self.proj.in_features, device=device, dtype=dtype))


class ToyBackbone(SequenceBackbone):
    """Only build_layer is family-specific."""

    config_class: ClassVar[type[ArchConfig]] = ToyConfig
    config: ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.returns_aux_loss = config.moe

    def build_layer(self, index: int) -> nn.Module:
        c = self.config
        if c.mixer == "running_sum":
            mixer: nn.Module = RunningSum(c.d_model)
        else:
            mixer = Attention(c.d_model, 2, n_kv_heads=1, rope=RotaryEmbedding(c.d_model // 2))
        ffn = MoEFeedForward(c.d_model, 12, 3, 2) if c.moe else FeedForward(c.d_model, 16)
        return TransformerBlock(c.d_model, mixer, ffn, dropout=c.dropout)


class _Plugin:
    @hookimpl
    def register_architectures(self, register: Callable[..., None]) -> None:
        for name in ("toy_attention_backbone", "toy_running_sum_backbone"):
            register(
                ArchSpec(
                    name=name,
                    family="testing",
                    distribution="tests",
                    summary="toy",
                    paper=None,
                    config=f"{_MODULE}:ToyConfig",
                    model=f"{_MODULE}:ToyBackbone",
                    inputs=sequence_inputs(),
                    outputs=sequence_outputs(aux_loss_when="moe"),
                    causal=True,
                    stateful=True,
                    variable_length=True,
                )
            )


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    get_registry().register_plugin(_Plugin(), "test-backbone")
    yield
    get_registry().unregister_plugin("test-backbone")


def _build(mixer: str = "attention", **overrides: Any) -> ToyBackbone:
    torch.manual_seed(0)
    name = "toy_attention_backbone" if mixer == "attention" else "toy_running_sum_backbone"
    model = ToyBackbone(ToyConfig(arch=name, mixer=mixer, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return model


def _x(B: int = 2, T: int = 6, d: int = 8, seed: int = 1) -> Tensor:
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed))


def test_input_projection_or_identity_or_embedding() -> None:
    assert isinstance(_build().input_proj, nn.Identity)
    model = _build(d_in=5)
    assert isinstance(model.input_proj, nn.Linear)
    assert model.input_proj.in_features == 5
    assert model(_x(d=5)).shape == (2, 6, 8)
    lm = _build(vocab_size=11)
    assert lm.primary_input == "input_ids"
    assert lm.input_proj is None
    assert lm(input_ids=torch.randint(0, 11, (2, 6))).shape == (2, 6, 11)


def test_tied_embeddings_share_the_parameter() -> None:
    tied, untied = _build(vocab_size=11, tie_embeddings=True), _build(vocab_size=11)
    assert tied.lm_head is not None
    assert tied.embed_tokens is not None
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert untied.lm_head is not None
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_pooling_last_and_mean_follow_the_mask() -> None:
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    x = _x()
    full = _build()(x, attention_mask=mask)
    last = _build(output="last")(x, attention_mask=mask)
    mean = _build(output="mean")(x, attention_mask=mask)
    assert_close(last, torch.stack([full[0, 5], full[1, 3]]), FP32)
    assert_close(mean, torch.stack([full[0].mean(0), full[1, :4].mean(0)]), FP32)
    assert_close(_build(output="last")(x), _build()(x)[:, -1], FP32)


@pytest.mark.parametrize("mixer", ["attention", "running_sum"])
def test_left_and_right_padding_equal_unpadded(mixer: str) -> None:
    model = _build(mixer)
    x = _x(B=1, T=5)
    expected = model(x)
    pad = torch.randn(1, 2, 8)
    left = model(torch.cat([pad, x], 1), attention_mask=torch.tensor([[False] * 2 + [True] * 5]))
    right = model(torch.cat([x, pad], 1), attention_mask=torch.tensor([[True] * 5 + [False] * 2]))
    assert_close(left[:, 2:], expected, FP32)
    assert_close(right[:, :5], expected, FP32)


@pytest.mark.parametrize(("mixer", "max_len"), [("attention", None), ("attention", 8), ("running_sum", None)])
def test_prefill_then_steps_equal_forward(mixer: str, max_len: int | None) -> None:
    model = _build(mixer, vocab_size=11)
    ids = torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(2))
    expected = model(input_ids=ids)
    state = model.init_state(2, max_len=max_len)
    assert isinstance(state, SequenceState)
    outs = [model.step(ids[:, :3], state)[0]]
    for t in range(3, 7):
        y, state = model.step(ids[:, t : t + 1], state)
        outs.append(y)
    assert_close(torch.cat(outs, 1), expected, SCAN)
    assert state.position.tolist() == [7, 7]


def test_step_with_a_left_padded_prompt() -> None:
    model = _build()
    x = _x(B=1, T=5)
    expected = model(x)
    state = model.init_state(1, max_len=9)
    prompt = torch.cat([torch.randn(1, 2, 8), x[:, :3]], 1)
    y0, state = model.step(prompt, state, attention_mask=torch.tensor([[False, False, True, True, True]]))
    y1, state = model.step(x[:, 3:], state)
    assert_close(torch.cat([y0[:, 2:], y1], 1), expected, SCAN)
    assert state.position.tolist() == [5]


def test_grad_checkpointing_gives_identical_gradients() -> None:
    def grads(checkpointing: bool) -> list[Tensor]:
        model = _build(dropout=0.3).train()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(3)
        model(_x()).pow(2).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, checkpointed = grads(False), grads(True)
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed, strict=True):
        assert torch.equal(a, b)


def test_aux_loss_output_sums_the_layers() -> None:
    model = _build(moe=True)
    out = model(_x())
    assert isinstance(out, SequenceOutput)
    assert out.logits is None
    assert out.hidden is not None
    h = model.embed_inputs(_x())
    total = torch.zeros(())
    for layer in model.layers:
        h, aux = layer(h)
        total = total + aux
    assert out.aux_loss is not None
    assert_close(out.aux_loss, total, FP32)


def test_inputs_are_checked_and_build_layer_is_required() -> None:
    with pytest.raises(edifice.InputError, match=r"input 'x' expected \[B, T, 8\]"):
        _build()(torch.zeros(2, 6, 5))
    with pytest.raises(NotImplementedError, match="build_layer"):
        SequenceBackbone(SequenceConfig(arch="toy_attention_backbone"))


def test_sequence_config_validates_and_resolves_aliases() -> None:
    cfg = SequenceConfig.from_overrides(hidden_size=16, num_layers=3, embed_dim=4)
    assert (cfg.d_model, cfg.n_layers, cfg.d_in) == (16, 3, 4)
    with pytest.raises(edifice.ConfigError, match="tie_embeddings"):
        SequenceConfig(tie_embeddings=True)
    with pytest.raises(edifice.ConfigError, match="output"):
        SequenceConfig(output="first")  # type: ignore[arg-type]
    with pytest.raises(edifice.ConfigError, match="dropout"):
        SequenceConfig(dropout=1.0)
