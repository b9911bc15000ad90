"""ttt_e2e: the model against an fp64 oracle of docs/design/ttt_e2e.md, the inner step, meta-gradients, config.

The oracle follows the design note's definition and nothing else: a plain token loop (explicit RMSNorm, RoPE,
windowed softmax attention, GELU MLPs) in which the tokens of mini-batch ``j`` use the fast weights ``W_j``; each
``W_{i+1} = W_i - η ∇ℓ_i(W_i)`` is obtained by re-running the whole prefix up to the end of mini-batch ``i`` with
``W_i`` as the only leaf and calling ``torch.autograd.grad`` on its next-token loss. No cache, no recomputation trick.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.outputs import tensor_leaves
from edifice.testing import mutate_op, signature
from edifice.testing.tol import SCAN, assert_close
from edifice_recurrent.ttt_e2e import TTTE2E, E2EBlock

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection

TINY: dict[str, Any] = {
    "d_model": 16,
    "n_layers": 2,
    "n_heads": 2,
    "mlp_ratio": 2.0,
    "window_size": 6,
    "mini_batch_size": 4,
    "vocab_size": 32,
}
FP64 = {"atol": 1e-6, "rtol": 1e-5}  # fp64 throughout, except the RoPE tables and RMSNorm statistics (fp32)


def build(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> TTTE2E:
    torch.manual_seed(seed)
    model = edifice.build("ttt_e2e", **{**TINY, **overrides}).to(dtype)
    assert isinstance(model, TTTE2E)
    with torch.no_grad():  # larger weights than at init, so every part (and the inner step) matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * weight


def rope(x: torch.Tensor, pos: int, base: float) -> torch.Tensor:
    """RoPE of ``x [H, D]`` at position ``pos``: features i and i + D/2 rotate by pos·base^(-2i/D)."""
    D = x.shape[-1]
    ang = pos * base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)


def run(model: TTTE2E, inputs: torch.Tensor, weights: list[list[torch.Tensor]]) -> torch.Tensor:
    """Outputs ``RMSNorm(h) [T, d]`` of one sequence, the tokens of mini-batch j using fast weights ``weights[j]``."""
    c = model.config
    H, D, b, w = c.n_heads, c.head_size, c.mini_batch_size, c.window_size
    h_all = model.embed_inputs(inputs[None])[0]  # (T, d)
    keys: list[list[torch.Tensor]] = [[] for _ in model.layers]
    values: list[list[torch.Tensor]] = [[] for _ in model.layers]
    outs = []
    for t in range(inputs.shape[0]):
        h = h_all[t]
        n_mut = 0
        for i, block in enumerate(model.layers):
            assert isinstance(block, E2EBlock)
            a = block.attn
            x = rms(h, block.attn_norm.weight)
            q = rope((x @ a.q_proj.weight.T).view(H, D), t, a.rope.base)
            keys[i].append(rope((x @ a.k_proj.weight.T).view(H, D), t, a.rope.base))
            values[i].append((x @ a.v_proj.weight.T).view(H, D))
            K, V = torch.stack(keys[i][max(0, t - w + 1) :]), torch.stack(values[i][max(0, t - w + 1) :])  # window
            p = torch.einsum("hd,lhd->hl", q, K).div(D**0.5).softmax(-1)
            h = h + torch.einsum("hl,lhd->hd", p, V).reshape(H * D) @ a.o_proj.weight.T
            x = rms(h, block.mlp_norm.weight)
            y = F.gelu(x @ block.mlp.up_proj.weight.T) @ block.mlp.down_proj.weight.T
            if block.mutable:
                W1, W2 = weights[t // b][2 * n_mut], weights[t // b][2 * n_mut + 1]
                y = y + F.gelu(x @ W1) @ W2
                n_mut += 1
            h = h + y
        outs.append(rms(h, model.norm.weight))
    return torch.stack(outs)


def next_loss(model: TTTE2E, y: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean next-token loss: cross-entropy of the LM head, or ``½ mean (P y - x)²`` for features."""
    if model.lm_head is not None:
        return F.cross_entropy(y @ model.lm_head.weight.T, targets)
    assert model.next_head is not None
    return 0.5 * (y @ model.next_head.weight.T - targets).square().mean(-1).mean()


def oracle(model: TTTE2E, inputs: torch.Tensor) -> torch.Tensor:
    """The model's outputs from the design note's equations, sequence by sequence, in fp64."""
    c = model.config
    b, T = c.mini_batch_size, inputs.shape[1]
    initial = [w.detach() for layer in model.layers for w in layer.fast_init()]  # type: ignore[operator]
    outs = []
    for row in inputs:
        schedule: list[list[torch.Tensor]] = []
        W = initial
        for i in range(-(-T // b)):
            schedule.append(W)
            end = (i + 1) * b
            if end < T:  # W_{i+1} = W_i - η ∇ℓ_i(W_i), ℓ_i over mini-batch i's next tokens
                with torch.enable_grad():
                    leaves = [w.clone().requires_grad_(True) for w in W]
                    y = run(model, row[:end], [*schedule[:-1], leaves])
                    grads = torch.autograd.grad(next_loss(model, y[i * b : end], row[i * b + 1 : end + 1]), leaves)
                W = [w - c.inner_lr * g for w, g in zip(W, grads, strict=True)]
        outs.append(run(model, row, schedule))
    return torch.stack(outs)


def _inputs(model: TTTE2E, T: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if model.config.vocab_size is not None:
        return torch.randint(0, model.config.vocab_size, (2, T), generator=gen)
    return torch.randn(2, T, model.config.d_in or model.config.d_model, generator=gen, dtype=torch.float64)


def check_model(**overrides: Any) -> None:
    model = build(0, torch.float64, **overrides).eval()
    x = _inputs(model, 11, seed=1)
    key = model.primary_input
    with torch.no_grad():
        want = oracle(model, x)
        if model.lm_head is not None:
            want = want @ model.lm_head.weight.T
        torch.testing.assert_close(model(**{key: x}), want, **FP64)  # the training form
        state = model.init_state(2)
        pieces = [model.step(x[:, :5], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, **FP64)  # the recurrent form


@signature("ttt_e2e")
@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_layers": 3, "mutable_fraction": 0.5}, {"vocab_size": None, "d_in": 5}],
    ids=["tokens", "two-mutable-blocks", "features"],
)
def test_model_matches_the_design_notes_equations(overrides: dict[str, Any]) -> None:
    check_model(**overrides)


def test_without_the_inner_step_or_with_unmasked_attention_the_oracle_fails() -> None:
    with mutate_op("sdpa"), pytest.raises(AssertionError):
        check_model()
    model = build(0, torch.float64).eval()
    x = _inputs(model, 11, seed=1)
    with torch.no_grad():
        want = oracle(model, x) @ model.lm_head.weight.T  # type: ignore[union-attr]
        object.__setattr__(model.config, "inner_lr", 0.0)  # the same weights, no test-time learning
        assert not torch.allclose(model(input_ids=x), want, atol=1e-3)


def test_the_inner_step_lowers_the_next_token_loss_of_its_mini_batch() -> None:
    model = build(2, torch.float64).eval()
    object.__setattr__(model.config, "inner_lr", 0.05)
    x = _inputs(model, 5, seed=3)  # one mini-batch of 4, and the token that completes it
    with torch.no_grad():
        state = model.init_state(2)
        model.step(x, state)  # the fifth token triggers the step on the first mini-batch
    initial = [w.detach() for layer in model.layers for w in layer.fast_init()]  # type: ignore[operator]
    for row, ids in enumerate(x):
        after = [w[row] for w in state.fast]
        before_loss = next_loss(model, run(model, ids[:4], [initial]), ids[1:5])
        after_loss = next_loss(model, run(model, ids[:4], [after]), ids[1:5])
        assert after_loss < before_loss, (row, float(before_loss), float(after_loss))


def test_meta_gradients_flow_through_the_inner_steps() -> None:
    # E2E at training time: d(outputs)/dW_0 includes the path through every inner update (second order).
    model = build(4, torch.float64).train()
    x = _inputs(model, 10, seed=5)
    block = model.layers[-1]
    assert isinstance(block, E2EBlock) and block.W1 is not None
    cot = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    direction = torch.randn_like(block.W1)

    def objective() -> torch.Tensor:
        return (model(input_ids=x) * cot).sum()  # type: ignore[operator]

    (grad,) = torch.autograd.grad(objective(), [block.W1])
    eps = 1e-3  # RoPE tables and RMSNorm statistics are fp32: a smaller step would measure their rounding
    with torch.no_grad():
        block.W1.add_(eps * direction)
        up = objective()
        block.W1.sub_(2 * eps * direction)
        down = objective()
        block.W1.add_(eps * direction)
    torch.testing.assert_close((grad * direction).sum(), (up - down) / (2 * eps), atol=1e-3, rtol=1e-3)


def test_step_state_is_constant_and_padding_is_exact() -> None:
    model = build(6).eval()
    x = _inputs(model, 13, seed=7)
    left = torch.tensor([[False] * 3 + [True] * 10, [True] * 13])
    with torch.no_grad():
        want = model(input_ids=x)
        state = model.init_state(2, max_len=13)
        shapes = [tuple(t.shape) for _, t in tensor_leaves(state)]
        pieces = [model.step(x[:, a:e], state)[0] for a, e in ((0, 3), (3, 4), (4, 9), (9, 13))]
        assert [tuple(t.shape) for _, t in tensor_leaves(state)] == shapes
        assert_close(torch.cat(pieces, 1), want, SCAN)
        alone = model(input_ids=x[:1, 3:])
        assert_close(model(input_ids=x, attention_mask=left)[0, 3:], alone[0], SCAN)
        state = model.init_state(2)
        first, _ = model.step(x[:, :6], state, attention_mask=left[:, :6])
        rest, _ = model.step(x[:, 6:], state)
    assert_close(torch.cat([first, rest], 1)[0, 3:], alone[0], SCAN)


def test_mutable_blocks_initialisation_and_config() -> None:
    model = edifice.build("ttt_e2e", d_model=64, n_layers=8, vocab_size=50)
    mutable = [layer.mutable for layer in model.layers]  # type: ignore[union-attr]
    assert mutable == [False] * 6 + [True] * 2  # the last quarter
    block = model.layers[-1]
    assert isinstance(block, E2EBlock) and block.W1 is not None and block.W1.shape == (64, 256)
    assert abs(block.W1.std().item() - 0.02) < 0.002 and abs(block.mlp.up_proj.weight.std().item() - 0.02) < 0.002
    assert model.next_head is None and edifice.build("ttt_e2e", d_model=16, n_heads=2, d_in=3).next_head is not None
    config = edifice.config("ttt_e2e", chunk_size=8, window_size=8, num_heads=2, hidden_size=32)
    assert (config.mini_batch_size, config.n_heads, config.d_model) == (8, 2, 32)
    with pytest.raises(edifice.ConfigError, match="window_size"):
        edifice.config("ttt_e2e", window_size=8, mini_batch_size=16)
    with pytest.raises(edifice.ConfigError, match="mutable_fraction"):
        edifice.config("ttt_e2e", mutable_fraction=0.0)
    with pytest.raises(edifice.ConfigError, match="head_dim"):
        edifice.config("ttt_e2e", d_model=12, n_heads=4)


def test_the_capture_path_runs_the_inner_step_every_token_masked_by_row(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under CUDA-graph capture ``step`` cannot ask the host whether a mini-batch ended: it runs the inner step on
    # every token and ``due`` selects the rows it updates. Forcing that path on CPU, with rows whose mini-batches end
    # at different steps (left padding), must still reproduce ``forward``.
    import edifice_recurrent.ttt_e2e as module

    model = build(6).eval()
    x = _inputs(model, 9, seed=7)
    left = torch.tensor([[False] * 3 + [True] * 6, [True] * 9])  # mini-batches end at steps 7 and 4, 8
    with torch.no_grad():
        want = model(input_ids=x, attention_mask=left)
        monkeypatch.setattr(module, "is_capturing", lambda: True)
        state = model.init_state(2)
        pieces = [model.step(x[:, t : t + 1], state, attention_mask=left[:, t : t + 1])[0] for t in range(9)]
    got = torch.cat(pieces, 1)
    assert_close(got[0, 3:], want[0, 3:], SCAN)
    assert_close(got[1], want[1], SCAN)
