"""YaRN context extension on the decoder_only stack, and a converter from YaRN-scaled Llama checkpoints.

Peng, Quesnelle, Fan, Shippole (2023), "YaRN: Efficient Context Window Extension of Large Language Models",
https://arxiv.org/abs/2309.00071. RoPE (eq. 34 of RoFormer) is stretched from a training length ``L`` to ``s L``:

* eq. (17): the wavelength of dimension ``d`` is ``λ_d = 2π b^(2d/|D|)``; ``r(d) = L / λ_d`` rotations fit in ``L``;
* eqs. (18)-(20), "NTK-by-parts": ``θ'_d = (1 - γ(r)) θ_d / s + γ(r) θ_d`` with the ramp ``γ`` 0 below ``α``
  (``beta_slow``) rotations (interpolate) and 1 above ``β`` (``beta_fast``) rotations (keep);
* eq. (21)-(22): softmax temperature ``softmax(q k^T / (t sqrt(|D|)))`` with ``sqrt(1/t) = 0.1 ln(s) + 1``, applied,
  as the paper suggests, by scaling both rotated q and k by ``sqrt(1/t)`` (the cos/sin tables).

The mechanism lives once in core, :class:`edifice.blocks.rope.RotaryEmbedding` with a ``yarn``
:class:`~edifice.blocks.rope.RopeScaling`; this entry is the Llama-style stack of
:class:`~edifice_attention.decoder_only.DecoderOnly` whose rotary embeddings get that scaling from the config's
explicit fields. Deviation (core's, stated there): the ramp is linear in the dimension index between the (rounded)
dimensions where ``r = β`` and ``r = α``, as in the authors' code and transformers, not linear in ``r``. The paper's
fine-tuning recipe (400 steps on PG19 at ``s L``) is training, not architecture, and is left to the user. Decoding uses
decoder_only's KV cache; keys are rotated with the scaled angles before caching, so ``step`` equals ``forward``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import edifice
from edifice.blocks.rope import RotaryEmbedding
from edifice.config import ArchConfig
from edifice.errors import ConfigError
from edifice_attention._hf_convert import load_converted
from edifice_attention.configs.yarn import YarnConfig
from edifice_attention.convert import _unpack, llama_config, map_llama_state_dict
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["Yarn", "from_llama_yarn", "yarn_config"]


class Yarn(DecoderOnly):
    """:class:`DecoderOnly` whose every attention layer rotates with YaRN-scaled RoPE (see module doc)."""

    config_class: ClassVar[type[ArchConfig]] = YarnConfig
    config: YarnConfig

    def build_rope(self, head_dim: int | None = None) -> RotaryEmbedding | None:
        """decoder_only's rotary embedding, scaled by YaRN from the config's explicit fields."""
        c = self.config
        head_dim = c.head_size if head_dim is None else head_dim
        return RotaryEmbedding(head_dim, rotary_dim=c.rotary_dim, base=c.rope_base, scaling=c.yarn_scaling())


def yarn_config(hf: Any, **overrides: Any) -> YarnConfig:
    """The :class:`YarnConfig` of a Llama-family transformers config whose RoPE scaling is YaRN."""
    base = dataclasses.asdict(llama_config(hf))
    scaling = base.pop("rope_scaling") or {}
    if scaling.get("kind") != "yarn":
        raise ConfigError(f"YaRN converter: the checkpoint's RoPE scaling is {scaling.get('kind', 'none')!r}, not yarn")
    unsupported = sorted(set(scaling) & {"mscale", "mscale_all_dim"})
    if unsupported:
        raise ConfigError(f"YaRN converter: DeepSeek-style {', '.join(unsupported)} is not a yarn field (use mla)")
    for name in ("arch", "schema_version"):
        base.pop(name)
    fields = {
        "factor": float(scaling["factor"]),
        "original_max_position": int(scaling["original_max_position_embeddings"]),
        **{k: scaling[k] for k in ("beta_fast", "beta_slow", "attention_factor", "truncate") if k in scaling},
    }
    return edifice.config("yarn", **{**base, **fields, **overrides})  # type: ignore[return-value]


def from_llama_yarn(source: Any, **overrides: Any) -> Yarn:
    """Convert a transformers Llama-family model with YaRN RoPE (or ``(config, state_dict)``) to ``yarn``."""
    hf_config, state_dict = _unpack(source)
    config = yarn_config(hf_config, **overrides)
    return load_converted(Yarn, config, map_llama_state_dict(state_dict, config), who="YaRN")
