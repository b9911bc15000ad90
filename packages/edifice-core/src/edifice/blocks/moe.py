"""Sparse mixture-of-experts feed-forward layer with top-k softmax routing and optional shared experts.

* Routing: Shazeer et al. (2017), "Outrageously Large Neural Networks", https://arxiv.org/abs/1701.06538; as in
  Mixtral (Jiang et al. 2024, https://arxiv.org/abs/2401.04088, eq. 1-2) the router's softmax runs over *all*
  experts, the top k are kept and their weights renormalised to sum to one (``norm_topk_prob=False`` keeps the raw
  probabilities, as Qwen2-MoE does). ``y = Σ_{e ∈ topk(x)} g_e(x) E_e(x)``.
* Experts are gated (SwiGLU) feed-forward networks (:class:`~edifice.blocks.ffn.GatedFeedForward`).
* Shared experts: DeepSeekMoE (Dai et al. 2024, https://arxiv.org/abs/2401.06066, eq. 9) adds always-on experts,
  implemented as one gated FFN of width ``d_shared`` (default ``n_shared_experts * d_hidden``); Qwen2-MoE scales it by
  a learned sigmoid gate ``σ(x w)`` (``shared_expert_gate=True``).
* Load balancing: Fedus et al. (2021), "Switch Transformers", https://arxiv.org/abs/2101.03961, eq. (4)-(6):
  ``aux = α · N · Σ_i f_i P_i`` with ``f_i`` the fraction of tokens that pick expert ``i`` among their top k and
  ``P_i`` the mean router probability of expert ``i``. With ``k > 1`` each token counts once per expert it picks, so a
  perfectly balanced router gives ``α k`` (transformers' ``load_balancing_loss_func`` uses the same convention).
  Returned already multiplied by ``aux_loss_coef`` (α).
* Router jitter (Switch §2.4): in training, router *inputs* are multiplied by ``U(1 - ε, 1 + ε)``. (transformers'
  Mixtral also jitters the experts' inputs; the paper jitters only the router.)

No token is ever dropped: capacity is unlimited. Dispatch is vectorised: assignments are sorted by expert, each
expert runs once on its contiguous slice, and results are scattered back with ``index_add_`` (one host sync per call
to read the group sizes). Under ``torch.compile`` and CUDA-graph capture the experts instead run densely on every
token, weighted by the (mostly zero) combine weights, which has no data-dependent shapes and gives the same result
(also on the meta device, where group sizes are unknown).

Parameter names (a Mixtral converter maps ``block_sparse_moe.gate.weight -> router.weight`` and
``experts.{i}.w1/w3/w2 -> experts.{i}.gate_proj/up_proj/down_proj``; Qwen2-MoE's ``shared_expert`` and
``shared_expert_gate`` keep their names)::

    router.weight                  [n_experts, d_model]
    experts.{i}.gate_proj.weight   [d_hidden, d_model]
    experts.{i}.up_proj.weight     [d_hidden, d_model]
    experts.{i}.down_proj.weight   [d_model, d_hidden]
    shared_expert.{gate,up,down}_proj.weight, shared_expert_gate.weight [1, d_model]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edifice.blocks.ffn import GatedFeedForward
from edifice.graphs import is_capturing

__all__ = ["MoEFeedForward", "load_balancing_loss"]


def load_balancing_loss(
    probs: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch eq. (4), unweighted: ``N Σ_i f_i P_i`` from router ``probs [n, N]`` and ``topk_idx [n, k]`` (fp32 scalar).

    ``mask [n]`` (bool, True = real token) leaves padding out of both ``f`` and ``P``.
    """
    weight = probs.new_ones(probs.shape[0]) if mask is None else mask.to(probs.dtype)
    n_tokens = weight.sum().clamp(min=1.0)
    # f_i: tokens choosing expert i (once per top-k slot) over all tokens, eq. (5)
    counts = torch.zeros(n_experts, dtype=probs.dtype, device=probs.device)
    counts.index_add_(0, topk_idx.flatten(), weight.repeat_interleave(topk_idx.shape[-1]))
    # P_i: mean router probability of expert i, eq. (6)
    mean_prob = (probs * weight[:, None]).sum(0)
    return n_experts * torch.sum(counts * mean_prob) / n_tokens**2


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of gated FFN experts with optional shared experts; ``forward`` -> ``(y, aux_loss)``."""

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        n_experts: int,
        top_k: int,
        *,
        n_shared_experts: int = 0,
        d_shared: int | None = None,
        shared_expert_gate: bool = False,
        activation: str = "silu",
        norm_topk_prob: bool = True,
        router_jitter: float = 0.0,
        aux_loss_coef: float = 0.01,
    ) -> None:
        super().__init__()
        if not 0 < top_k <= n_experts:
            raise ValueError(f"MoEFeedForward: need 0 < top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        if n_shared_experts < 0 or (d_shared is not None and d_shared <= 0):
            raise ValueError(
                f"MoEFeedForward: n_shared_experts must be >= 0 and d_shared > 0, got {n_shared_experts} and {d_shared}"
            )
        if shared_expert_gate and not n_shared_experts:
            raise ValueError("MoEFeedForward: shared_expert_gate=True needs n_shared_experts >= 1")
        if not 0.0 <= router_jitter < 1.0:
            raise ValueError(f"MoEFeedForward: router_jitter must lie in [0, 1), got {router_jitter}")
        self.d_model = d_model
        self.n_experts = n_experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.router_jitter = router_jitter
        self.aux_loss_coef = aux_loss_coef
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            GatedFeedForward(d_model, d_hidden, activation=activation) for _ in range(n_experts)
        )
        self.shared_expert = (
            GatedFeedForward(d_model, d_shared or n_shared_experts * d_hidden, activation=activation)
            if n_shared_experts
            else None
        )
        self.shared_expert_gate = nn.Linear(d_model, 1, bias=False) if shared_expert_gate else None

    def reset_parameters(self) -> None:
        """PyTorch's default ``nn.Linear`` initialisation for the router, experts and shared expert."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def route(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router for tokens ``x [n, d_model]`` -> fp32 ``probs [n, N]``, ``weights [n, k]`` and ``indices [n, k]``."""
        h = x.float()
        if self.training and self.router_jitter > 0:
            noise = torch.rand(h.shape, generator=generator, device=h.device, dtype=h.dtype)
            h = h * (1.0 - self.router_jitter + 2.0 * self.router_jitter * noise)  # U(1 - ε, 1 + ε)
        probs = F.linear(h, self.router.weight.float()).softmax(dim=-1)  # softmax over all experts, in fp32
        weights, indices = probs.topk(self.top_k, dim=-1)  # (n, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights, indices

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [..., d_model]`` -> ``(y, aux_loss)``; ``attention_mask [...]`` (bool) keeps padding out of the loss."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoEFeedForward: expected input [..., {self.d_model}], got {list(x.shape)}")
        if attention_mask is not None and attention_mask.shape != x.shape[:-1]:
            raise ValueError(
                f"MoEFeedForward: attention_mask must have shape {list(x.shape[:-1])} (x without its feature "
                f"dimension), got {list(attention_mask.shape)}"
            )
        tokens = x.reshape(-1, self.d_model)  # (n, D)
        probs, weights, indices = self.route(tokens, generator)
        if torch.compiler.is_compiling() or tokens.is_meta or is_capturing():  # no data-dependent sizes there
            y = self._dense(tokens, weights, indices)
        else:
            y = self._sparse(tokens, weights, indices)
        if self.shared_expert is not None:
            shared = self.shared_expert(tokens)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(tokens)) * shared
            y = y + shared
        mask = None if attention_mask is None else attention_mask.reshape(-1).bool()
        aux_loss = self.aux_loss_coef * load_balancing_loss(probs, indices, self.n_experts, mask)
        return y.reshape(x.shape), aux_loss

    def _sparse(self, tokens: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Sort the n·k assignments by expert, run each expert once on its slice, scatter-add the weighted results."""
        flat_expert = indices.flatten()  # (n k,)
        order = flat_expert.argsort(stable=True)
        token_of = order // self.top_k  # token index of each sorted assignment
        sizes = torch.bincount(flat_expert, minlength=self.n_experts).tolist()  # one host sync
        grouped = torch.split(tokens[token_of], sizes)  # per expert: (n_e, D)
        outputs = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, grouped, strict=True)])
        weighted = outputs.float() * weights.flatten()[order, None]  # (n k, D) fp32
        out = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        return out.index_add_(0, token_of, weighted).to(tokens.dtype)

    def _dense(self, tokens: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, times its combine weight (zero unless chosen): static shapes for compile."""
        combine = torch.zeros(tokens.shape[0], self.n_experts, dtype=torch.float32, device=tokens.device)
        combine = combine.scatter(1, indices, weights)  # (n, N)
        out = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        for e, expert in enumerate(self.experts):
            out = out + combine[:, e : e + 1] * expert(tokens).float()
        return out.to(tokens.dtype)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, top_k={self.top_k}, norm_topk_prob={self.norm_topk_prob}"
