"""Multimodal rotary position embedding (Qwen2-VL M-RoPE, Qwen2.5-Omni TMRoPE) on the decoder_only stack.

Wang et al. (2024), "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any Resolution",
https://arxiv.org/abs/2409.12191, §2.1 "Multimodal Rotary Position Embedding", and Xu et al. (2025), "Qwen2.5-Omni
Technical Report", https://arxiv.org/abs/2503.20215, §2.2 "TMRoPE" (time-aligned M-RoPE):

* every token has a 3-D position ``(t, h, w)``: text tokens ``(p, p, p)`` with ``p`` the running 1-D index (so a
  text-only sequence is exactly 1-D RoPE); a vision item of ``T x H x W`` merged patches starting at ``p`` gets
  ``(p + t·Δ, p + h, p + w)`` (``Δ = 1`` in Qwen2-VL; in Qwen2.5-VL/Omni ``Δ`` = position ids per temporal patch,
  ``tokens_per_second · temporal_patch_size / fps``, so the temporal id follows absolute time, 25 ids per second in
  Omni: the "T" of TMRoPE); the next text starts at ``p + max(H, W)``;
* the ``d/2`` rotary frequencies ``θ_i = base^(-2i/d)`` are split into three sections (``mrope_section``, Qwen2-VL's
  ``[16, 24, 24]`` for d = 128): frequency ``i`` of section ``a`` rotates by ``pos_a · θ_i`` (RoFormer eq. 34 with
  per-section positions), in the rotate-half layout.

:func:`mrope_position_ids` builds the 3-D ids from token types and the vision grids (Qwen2-VL's ``get_rope_index``);
:class:`MRotaryEmbedding` the sectioned tables; :class:`MRoPEAttention` is core attention whose causal mask and cache
use the 1-D sequence positions while RoPE uses the 3-D ones. ``forward(..., position_ids=[B, 3, T])`` takes them;
without, the sequence is text. ``step(..., position_ids=...)`` prefills a multimodal prompt and records each row's
``rope_delta = max(position) + 1 - length``, so later text tokens rotate by ``position + rope_delta`` on all three
axes, as Qwen2-VL's generation does.

Deviations: the vision encoder and the audio encoder are not part of this entry (inputs are token ids or features,
e.g. from a vision tower); Omni's interleaving of audio and video in 2-second chunks is a token *order* the caller
chooses, and audio tokens (type 3) take 1-D positions like text (one id per 40 ms audio frame, the same rate as
Omni's 25 temporal ids per second).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import edifice
from edifice.blocks.attention import Attention
from edifice.blocks.backbone import SequenceOutput, SequenceState
from edifice.blocks.kv_cache import KVCache
from edifice.blocks.rope import RotaryEmbedding
from edifice.config import ArchConfig
from edifice.errors import CheckpointError, InputError
from edifice.outputs import model_output
from edifice_attention._hf_convert import load_converted
from edifice_attention.configs.tmrope import TMRoPEConfig
from edifice_attention.convert import _get, _unpack, llama_config, map_llama_state_dict
from edifice_attention.decoder_only import DecoderOnly

__all__ = ["MRoPEAttention", "MRotaryEmbedding", "TMRoPE", "TMRoPEState", "from_qwen2_vl_text", "mrope_position_ids"]

TEXT, IMAGE, VIDEO, AUDIO = 0, 1, 2, 3


def mrope_position_ids(
    token_types: Tensor,
    *,
    image_grid_thw: Tensor | None = None,
    video_grid_thw: Tensor | None = None,
    attention_mask: Tensor | None = None,
    spatial_merge_size: int = 2,
    video_time_interval: Sequence[float] | float = 1.0,
) -> tuple[Tensor, Tensor]:
    """3-D rotary positions ``[B, 3, T]`` and each row's ``rope_delta [B]`` (Qwen2-VL's ``get_rope_index``).

    ``token_types [B, T]``: 0 text, 1 image, 2 video, 3 audio (a run of equal types is one item; items take their
    ``[T, H, W]`` patch grids from ``image_grid_thw``/``video_grid_thw [N, 3]`` in order, before merging
    ``spatial_merge_size`` patches per side). ``video_time_interval`` is Δ, the temporal id step per video frame
    group (1 in Qwen2-VL; ``tokens_per_second · temporal_patch_size / fps`` for time-aligned TMRoPE), one per video
    or shared. Padding (``attention_mask`` False) is skipped and gets position 1 on every axis.
    """
    if token_types.dim() != 2:
        raise ValueError(f"mrope_position_ids: token_types expected [B, T], got {list(token_types.shape)}")
    B, T = token_types.shape
    positions = torch.ones(B, 3, T, dtype=torch.long, device=token_types.device)
    grids = {IMAGE: iter(image_grid_thw.tolist() if image_grid_thw is not None else []),
             VIDEO: iter(video_grid_thw.tolist() if video_grid_thw is not None else [])}  # fmt: skip
    intervals = iter(
        [video_time_interval] * 10**6 if isinstance(video_time_interval, float | int) else video_time_interval
    )
    deltas = []
    for b in range(B):
        keep = attention_mask[b].bool() if attention_mask is not None else torch.ones(T, dtype=torch.bool)
        types = token_types[b][keep.to(token_types.device)].tolist()
        pieces, start = [], 0
        for kind, group in itertools.groupby(types):
            n = len(list(group))
            if kind in (TEXT, AUDIO):
                pieces.append(torch.arange(start, start + n).expand(3, n))
                start += n
                continue
            if kind not in (IMAGE, VIDEO):
                raise ValueError(f"mrope_position_ids: unknown token type {kind} (0 text, 1 image, 2 video, 3 audio)")
            try:
                t, h, w = next(grids[kind])
            except StopIteration:
                raise ValueError(
                    f"mrope_position_ids: more {'image' if kind == IMAGE else 'video'} runs than grids"
                ) from None
            h, w = h // spatial_merge_size, w // spatial_merge_size
            if t * h * w != n:
                raise ValueError(f"mrope_position_ids: a run of {n} vision tokens does not match its grid {t}x{h}x{w}")
            step = next(intervals) if kind == VIDEO else 1.0
            tt = (torch.arange(t) * step).long()[:, None, None].expand(t, h, w)
            hh = torch.arange(h)[None, :, None].expand(t, h, w)
            ww = torch.arange(w)[None, None, :].expand(t, h, w)
            pieces.append(torch.stack([tt, hh, ww]).reshape(3, -1) + start)
            start += max(h, w)
        row = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)
        positions[b][:, keep.to(positions.device)] = row.to(positions.device)
        deltas.append((int(row.max()) + 1 if row.numel() else 0) - len(types))
    return positions, torch.tensor(deltas, dtype=torch.long, device=token_types.device)


class MRotaryEmbedding(RotaryEmbedding):
    """RoPE whose frequency sections rotate by the temporal, height and width positions ``[B, 3, T]``."""

    def __init__(self, head_dim: int, sections: Sequence[int], **kwargs: Any) -> None:
        super().__init__(head_dim, **kwargs)
        if len(sections) != 3 or sum(sections) != self.rotary_dim // 2:
            raise ValueError(f"MRotaryEmbedding: sections {list(sections)} must be 3 and sum to {self.rotary_dim // 2}")
        self.sections = tuple(int(s) for s in sections)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``[T]``/``[B, T]`` (text: axes equal) or ``[B, 3, T]`` -> fp32 ``(cos, sin)`` ``[.., T, rotary_dim]``."""
        if positions.dim() != 3:
            return super().forward(positions)  # 1-D positions: all three axes equal, plain RoPE
        if positions.shape[1] != 3:
            raise ValueError(f"MRotaryEmbedding: 3-D positions must be [B, 3, T], got {list(positions.shape)}")
        inv_freq = self.inv_freq(positions.device)  # (R/2,)
        axis = torch.repeat_interleave(
            torch.arange(3, device=positions.device), torch.tensor(self.sections, device=positions.device)
        )
        chosen = positions.float().transpose(1, 2)[..., axis]  # (B, T, R/2): the position each frequency follows
        angles = chosen * inv_freq
        angles = torch.cat((angles, angles), dim=-1)  # rotate-half layout
        cos, sin = angles.cos(), angles.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos, sin

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sections={self.sections}"


class MRoPEAttention(Attention):
    """Core attention whose RoPE takes ``rope_positions`` (3-D) while masks and caches use the 1-D positions."""

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
        rope_positions: Tensor | None = None,
    ) -> Tensor:
        """As :meth:`Attention.forward`; ``rope_positions [B, 3, T]`` (default ``positions``) drive the rotation."""
        self._check_call(x, mask, positions, state)
        q, k, v = self._qkv(x, mask=mask, positions=positions if rope_positions is None else rope_positions, state=None)
        k, v, masking = self._fetch(k, v, mask=mask, positions=positions, state=state)
        return self._attend(q, k, v, **masking)


@model_output
@dataclasses.dataclass
class TMRoPEState(SequenceState):
    """:class:`SequenceState` plus each row's offset of the rotary position over the sequence position."""

    rope_delta: Tensor
    """``[B]`` int64: text after a multimodal prompt rotates by ``position + rope_delta`` on every axis."""


class TMRoPE(DecoderOnly):
    """decoder_only with multimodal rotary positions (see module doc); takes optional ``position_ids [B, 3, T]``."""

    config_class: ClassVar[type[ArchConfig]] = TMRoPEConfig
    config: TMRoPEConfig
    _rope_positions: Tensor | None = None

    def build_rope(self, head_dim: int | None = None) -> RotaryEmbedding | None:
        """Sectioned M-RoPE over ``(t, h, w)``."""
        c = self.config
        return MRotaryEmbedding(
            c.head_size if head_dim is None else head_dim, c.sections, rotary_dim=c.rotary_dim,
            base=c.rope_base, scaling=c.rope_scaling,
        )  # fmt: skip

    def build_mixer(self, index: int) -> nn.Module:
        """Core attention with 3-D rotary positions (and Qwen2's bias-free output projection when asked)."""
        c = self.config
        return MRoPEAttention(**self.attention_kwargs(), out_bias=c.out_bias)

    def layer_inputs(self) -> list[dict[str, Any]]:
        """Every layer gets this call's 3-D rotary positions (None: the sequence positions, i.e. text)."""
        return [{"rope_positions": self._rope_positions} for _ in self.layers]

    def _check_position_ids(self, position_ids: Tensor | None, B: int, T: int) -> None:
        if position_ids is not None and (position_ids.shape != (B, 3, T) or position_ids.dtype != torch.long):
            raise InputError(
                f"tmrope: input 'position_ids' expected int64 [B, 3, T] = [{B}, 3, {T}], got "
                f"{str(position_ids.dtype).removeprefix('torch.')} {list(position_ids.shape)}"
            )

    def forward(
        self,
        x: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor | SequenceOutput:
        """decoder_only's forward; ``position_ids [B, 3, T]`` (from :func:`mrope_position_ids`) for multimodal input."""
        inputs = input_ids if input_ids is not None else x
        if inputs is not None:
            self._check_position_ids(position_ids, inputs.shape[0], inputs.shape[1])
        self._rope_positions = position_ids
        try:
            return super().forward(x=x, input_ids=input_ids, attention_mask=attention_mask)
        finally:
            self._rope_positions = None

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TMRoPEState:
        """decoder_only's state and a zero rotary offset per row."""
        state = super().init_state(batch_size, max_len=max_len, device=device, dtype=dtype)
        delta = torch.zeros_like(state.position)
        return TMRoPEState(layers=state.layers, position=state.position, rope_delta=delta)

    def step(  # type: ignore[override]
        self,
        x: Tensor,
        state: TMRoPEState,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor | SequenceOutput, TMRoPEState]:
        """decoder_only's step; ``position_ids [B, 3, t]`` for a multimodal chunk (it sets ``rope_delta``)."""
        B, t = x.shape[0], x.shape[1]
        self._check_position_ids(position_ids, B, t)
        if attention_mask is None:
            offsets = torch.arange(t, device=state.position.device).expand(B, t)
        else:
            offsets = attention_mask.to(torch.long).cumsum(dim=-1) - 1
        sequence = state.position[:, None] + offsets  # (B, t): what the backbone's step will use
        if position_ids is None:
            rope = (sequence + state.rope_delta[:, None])[:, None].expand(B, 3, t)
        else:
            rope = position_ids
            valid = attention_mask if attention_mask is not None else torch.ones_like(sequence, dtype=torch.bool)
            last = torch.where(valid[:, None], position_ids, -1).amax(dim=(1, 2))  # (B,)
            count = valid.sum(-1)
            state.rope_delta.copy_(torch.where(count > 0, last + 1 - (state.position + count), state.rope_delta))
        self._rope_positions = rope
        try:
            y, _ = super().step(x, state, attention_mask=attention_mask)
        finally:
            self._rope_positions = None
        return y, state


def from_qwen2_vl_text(source: Any, **overrides: Any) -> TMRoPE:
    """Convert the language model of a transformers ``Qwen2VLForConditionalGeneration`` to ``tmrope``.

    ``source`` is the model, or ``(config, state_dict)`` with the full or the text config; the vision tower's weights
    are skipped (they are not part of this entry).
    """
    hf_config, state_dict = _unpack(source)
    hf_config = _get(hf_config, "text_config") or hf_config
    params = dict(_get(hf_config, "rope_parameters") or _get(hf_config, "rope_scaling") or {})
    section = params.pop("mrope_section", None)
    if section is None:
        raise CheckpointError("Qwen2-VL converter: the config has no rope mrope_section")
    base = llama_config({**_as_dict(hf_config), "rope_parameters": {**params, "rope_type": "default"}})
    fields = {k: v for k, v in base.to_dict().items() if k not in ("arch", "schema_version")}
    fields.update(attention_bias=True, out_bias=False, mrope_section=tuple(section), window=None)
    config = edifice.config("tmrope", **{**fields, **overrides})
    state = {k: v for k, v in state_dict.items() if not k.startswith(("visual.", "model.visual."))}
    weights = map_llama_state_dict(state, config)  # type: ignore[arg-type]
    return load_converted(TMRoPE, config, weights, who="Qwen2-VL")  # type: ignore[arg-type]


def _as_dict(config: Any) -> dict[str, Any]:
    return dict(config) if isinstance(config, dict) else config.to_dict()
