"""Mixture of experts: a per-token loop oracle, parity with transformers' Mixtral and Qwen2-MoE blocks and their
load-balancing loss, batch independence and compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edifice.blocks.moe import MoEFeedForward

transformers = pytest.importorskip("transformers")
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func  # noqa: E402
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock  # noqa: E402

D, F_HIDDEN, N, K = 8, 12, 4, 2


def _perturbed(moe: MoEFeedForward, seed: int) -> MoEFeedForward:
    # Larger router weights make the top-k choice decisive (no near-ties between float orders).
    torch.manual_seed(seed)
    with torch.no_grad():
        moe.router.weight.normal_(std=1.0)
    return moe.eval()


def _oracle(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Dense loop over tokens: softmax over all experts, top-k, optional renormalisation, weighted expert sum."""
    out = torch.zeros_like(x.reshape(-1, D))
    for n, token in enumerate(x.reshape(-1, D)):
        probs = torch.softmax(moe.router.weight @ token, dim=0)
        chosen = sorted(range(N), key=lambda e: -probs[e].item())[: moe.top_k]
        total = sum(probs[e] for e in chosen) if moe.norm_topk_prob else 1.0
        for e in chosen:
            ex = moe.experts[e]
            h = F.silu(ex.gate_proj.weight @ token) * (ex.up_proj.weight @ token)
            out[n] += probs[e] / total * (ex.down_proj.weight @ h)
        if moe.shared_expert is not None:
            sh = moe.shared_expert
            shared = sh.down_proj.weight @ (F.silu(sh.gate_proj.weight @ token) * (sh.up_proj.weight @ token))
            if moe.shared_expert_gate is not None:
                shared = torch.sigmoid(moe.shared_expert_gate.weight @ token) * shared
            out[n] += shared
    return out.reshape(x.shape)


@pytest.mark.parametrize(
    "options",
    [{}, {"norm_topk_prob": False}, {"n_shared_experts": 2, "shared_expert_gate": True}, {"n_shared_experts": 1}],
)
def test_matches_per_token_oracle(options: dict[str, object]) -> None:
    moe = _perturbed(MoEFeedForward(D, F_HIDDEN, N, K, **options), 0)  # type: ignore[arg-type]
    x = torch.randn(2, 5, D)
    y, _ = moe(x)
    torch.testing.assert_close(y, _oracle(moe, x), rtol=1e-5, atol=1e-5)
    if options.get("n_shared_experts") == 2:
        assert moe.shared_expert is not None
        assert moe.shared_expert.up_proj.out_features == 2 * F_HIDDEN


def test_mixtral_parity_and_aux_loss() -> None:
    config = transformers.MixtralConfig(
        hidden_size=D, intermediate_size=F_HIDDEN, num_local_experts=N, num_experts_per_tok=K, num_attention_heads=2
    )
    reference = MixtralSparseMoeBlock(config).eval()
    moe = _perturbed(MoEFeedForward(D, F_HIDDEN, N, K, aux_loss_coef=0.02), 1)
    with torch.no_grad():
        reference.gate.weight.copy_(moe.router.weight)
        for e, expert in enumerate(moe.experts):
            reference.experts.gate_up_proj[e].copy_(torch.cat([expert.gate_proj.weight, expert.up_proj.weight]))
            reference.experts.down_proj[e].copy_(expert.down_proj.weight)
    x = torch.randn(3, 4, D)
    y, aux = moe(x)
    torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-5)
    logits = x.reshape(-1, D) @ moe.router.weight.T
    torch.testing.assert_close(aux, 0.02 * load_balancing_loss_func((logits,), N, K))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    _, aux_masked = moe(x, mask.bool())
    torch.testing.assert_close(aux_masked, 0.02 * load_balancing_loss_func((logits,), N, K, attention_mask=mask))


def test_qwen2_moe_parity_shared_gate_and_raw_topk() -> None:
    config = transformers.Qwen2MoeConfig(
        hidden_size=D,
        moe_intermediate_size=F_HIDDEN,
        shared_expert_intermediate_size=10,
        num_experts=N,
        num_experts_per_tok=K,
        norm_topk_prob=False,
        num_attention_heads=2,
    )
    reference = Qwen2MoeSparseMoeBlock(config).eval()
    moe = MoEFeedForward(
        D, F_HIDDEN, N, K, n_shared_experts=1, d_shared=10, shared_expert_gate=True, norm_topk_prob=False
    )
    moe = _perturbed(moe, 2)
    with torch.no_grad():
        reference.gate.weight.copy_(moe.router.weight)
        for e, expert in enumerate(moe.experts):
            reference.experts.gate_up_proj[e].copy_(torch.cat([expert.gate_proj.weight, expert.up_proj.weight]))
            reference.experts.down_proj[e].copy_(expert.down_proj.weight)
    # Qwen2-MoE's shared expert and gate keep their names: a plain state-dict load.
    reference.shared_expert.load_state_dict(moe.shared_expert.state_dict())  # type: ignore[union-attr]
    reference.shared_expert_gate.load_state_dict(moe.shared_expert_gate.state_dict())  # type: ignore[union-attr]
    x = torch.randn(2, 3, D)
    torch.testing.assert_close(moe(x)[0], reference(x), rtol=1e-5, atol=1e-5)


def test_balanced_loss_value_and_eval_batch_independence() -> None:
    moe = MoEFeedForward(D, F_HIDDEN, N, K, aux_loss_coef=0.5).eval()
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform probabilities: every token picks the same k experts
    _, aux = moe(torch.randn(6, D))
    # f = 1 on k experts, P = 1/N everywhere: 0.5 * N * k * (1/N) = 0.5 k
    torch.testing.assert_close(aux, torch.tensor(0.5 * K))

    moe = _perturbed(MoEFeedForward(D, F_HIDDEN, N, K), 3)
    x = torch.randn(4, 6, D)
    y, _ = moe(x)
    x2 = x.clone()
    x2[1:] = torch.randn(3, 6, D)
    torch.testing.assert_close(moe(x2)[0][0], y[0])
    torch.testing.assert_close(moe(x[:1])[0][0], y[0], rtol=1e-6, atol=1e-6)


def test_training_jitter_is_seeded_and_gradients_flow() -> None:
    moe = _perturbed(MoEFeedForward(D, F_HIDDEN, N, K, router_jitter=0.1), 4)
    x = torch.randn(2, 5, D)
    eval_y, _ = moe(x)
    moe.train()
    first = moe(x, generator=torch.Generator().manual_seed(7))
    again = moe(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first[0], again[0])
    torch.testing.assert_close(first[1], again[1])
    assert not torch.allclose(first[1], moe.eval()(x)[1])  # jitter moves the router probabilities
    moe.train()
    y, aux = moe(x, generator=torch.Generator().manual_seed(8))
    (y.square().sum() + aux).backward()
    assert moe.router.weight.grad is not None
    assert moe.router.weight.grad.abs().sum() > 0
    assert torch.equal(moe.eval()(x)[0], eval_y)


def test_compiled_and_meta_use_the_dense_path() -> None:
    moe = _perturbed(MoEFeedForward(D, F_HIDDEN, N, K), 6)
    x = torch.randn(2, 5, D)
    compiled = torch.compile(moe, backend="eager", fullgraph=True)
    compiled_y, compiled_aux = compiled(x)
    torch.testing.assert_close(compiled_y, moe(x)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_aux, moe(x)[1])
    # On the meta device the dense path infers shapes (group sizes are unknown there).
    meta_y, meta_aux = moe.to("meta")(x.to("meta"))
    assert meta_y.is_meta
    assert meta_y.shape == x.shape
    assert meta_aux.shape == ()


def test_bf16_meta_and_errors() -> None:
    moe = _perturbed(MoEFeedForward(D, F_HIDDEN, N, K), 5)
    x = torch.randn(2, 3, D)
    y_bf16, aux = moe.to(torch.bfloat16)(x.bfloat16())
    assert y_bf16.dtype == torch.bfloat16
    assert aux.dtype == torch.float32
    with torch.device("meta"):
        meta = MoEFeedForward(D, F_HIDDEN, N, K, n_shared_experts=1)
    assert all(p.is_meta for p in meta.parameters())
    with pytest.raises(ValueError, match="need 0 < top_k <= n_experts"):
        MoEFeedForward(D, F_HIDDEN, 2, 3)
    with pytest.raises(ValueError, match="shared_expert_gate=True needs n_shared_experts"):
        MoEFeedForward(D, F_HIDDEN, N, K, shared_expert_gate=True)
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 8\]"):
        moe(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[2, 3\]"):
        moe(x.bfloat16(), torch.ones(2, 4, dtype=torch.bool))
