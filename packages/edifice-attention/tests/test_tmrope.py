"""tmrope: parity with transformers' Qwen2-VL (get_rope_index and the M-RoPE language model), decoding, properties."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

import edifice
from edifice import InputError
from edifice.testing import redraw_parameters, signature
from edifice.testing.mutate import unmasked_sdpa
from edifice.testing.tol import FP32, SCAN, assert_close
from edifice_attention.tmrope import from_qwen2_vl_text, mrope_position_ids

transformers = pytest.importorskip("transformers")
Qwen2VLConfig = transformers.Qwen2VLConfig
Qwen2VLForConditionalGeneration, Qwen2VLModel = (
    transformers.Qwen2VLForConditionalGeneration,
    transformers.Qwen2VLModel,
)
VOCAB, MERGE = 40, 2
# Two rows: text, an image of 1x4x6 patches (6 merged tokens), text, a video of 2x4x4 patches (8 tokens), text;
# and text, a video, text, an image, with padding on the left.
TYPES = torch.tensor(
    [
        [0, 0, 0, *[1] * 6, 0, 0, *[2] * 8, 0, 0, 0],
        [0, 0, 0, 0, 0, *[2] * 8, 0, *[1] * 6, 0, 0],
    ]
)
MASK = torch.ones_like(TYPES, dtype=torch.bool)
MASK[1, :2] = False
IMAGES = torch.tensor([[1, 4, 6], [1, 4, 6]])
VIDEOS = torch.tensor([[2, 4, 4], [2, 4, 4]])


def _qwen2_vl(seed: int = 0) -> Any:
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 64,
            "bos_token_id": None,
            "eos_token_id": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0, "mrope_section": [2, 3, 3]},
        },
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "spatial_merge_size": MERGE},
    )
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return redraw_parameters(Qwen2VLForConditionalGeneration(config).eval(), seed=seed)


def _hf_rope_index(attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own Qwen2VLModel.get_rope_index (it reads only the merge size from its model)."""
    owner = types.SimpleNamespace(
        config=types.SimpleNamespace(vision_config=types.SimpleNamespace(spatial_merge_size=MERGE)),
        get_vision_position_ids=lambda *a, **k: Qwen2VLModel.get_vision_position_ids(None, *a, **k),
    )
    ids = torch.zeros_like(TYPES)
    return Qwen2VLModel.get_rope_index(owner, ids, TYPES, IMAGES, VIDEOS, attention_mask)  # type: ignore[arg-type]


@signature("tmrope")
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_position_ids_match_qwen2_vl_get_rope_index(padded: bool) -> None:
    mask = MASK if padded else None
    expected, expected_delta = _hf_rope_index(mask.long() if mask is not None else None)
    positions, delta = mrope_position_ids(
        TYPES, image_grid_thw=IMAGES, video_grid_thw=VIDEOS, attention_mask=mask, spatial_merge_size=MERGE
    )
    valid = mask if mask is not None else MASK | True
    assert torch.equal(positions.transpose(0, 1)[:, valid], expected[:, valid])
    assert torch.equal(delta, expected_delta.view(-1))


@signature("tmrope")
def test_tmrope_matches_qwen2_vl_language_model_with_3d_positions() -> None:
    hf = _qwen2_vl()
    model = edifice.convert("transformers.Qwen2VLForConditionalGeneration", hf).eval()
    positions, _ = mrope_position_ids(TYPES, image_grid_thw=IMAGES, video_grid_thw=VIDEOS, spatial_merge_size=MERGE)
    ids = torch.randint(0, VOCAB, TYPES.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(input_ids=ids, position_ids=positions.transpose(0, 1)).logits
        assert_close(model(input_ids=ids, position_ids=positions), expected, FP32, name="logits")
        cos_hf, sin_hf = hf.model.language_model.rotary_emb(torch.zeros(1), positions.transpose(0, 1))
        cos, sin = model.layers[0].mixer.rope(positions)
    assert_close(cos, cos_hf, FP32, name="cos")
    assert_close(sin, sin_hf, FP32, name="sin")


def test_time_aligned_video_positions() -> None:
    """TMRoPE: with Δ = tokens_per_second · temporal_patch_size / fps the temporal id follows absolute time."""
    types_ = torch.tensor([[0, *[2] * 12, 0]])  # a video of 3 frame groups of 2x2 merged patches
    positions, delta = mrope_position_ids(
        types_, video_grid_thw=torch.tensor([[3, 4, 4]]), video_time_interval=25 * 2 / 2.0
    )  # 25 ids/s, 2 frames per patch, 2 fps: one group per second
    assert positions[0, 0, 1:13].tolist() == [1] * 4 + [26] * 4 + [51] * 4
    assert positions[0, :, -1].tolist() == [3, 3, 3]  # the next text starts after max(H, W) = 2
    assert delta.tolist() == [51 + 1 - 14]


def test_text_only_is_plain_rope() -> None:
    torch.manual_seed(0)
    model = edifice.build("tmrope", **edifice.get_spec("tmrope").tiny).eval()
    tiny = {k: v for k, v in edifice.get_spec("tmrope").tiny.items() if k != "mrope_section"}
    plain = edifice.build("decoder_only", **tiny).eval()
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    text = torch.arange(12)[None, None].expand(2, 3, 12)
    with torch.no_grad():
        assert_close(model(input_ids=ids), plain(input_ids=ids), FP32)
        assert_close(model(input_ids=ids, position_ids=text), plain(input_ids=ids), FP32)
        spatial = text.clone()
        spatial[:, 1:, 3:9] = 3  # an image's tokens share height/width ids: the output changes
        assert (model(input_ids=ids, position_ids=spatial) - plain(input_ids=ids)).abs().max() > 1e-4


@pytest.mark.parametrize("max_len", [None, 26])
def test_step_prefills_multimodal_then_decodes_text_like_forward(max_len: int | None) -> None:
    torch.manual_seed(0)
    model = edifice.build("tmrope", **edifice.get_spec("tmrope").tiny).eval()
    positions, delta = mrope_position_ids(TYPES, image_grid_thw=IMAGES, video_grid_thw=VIDEOS, spatial_merge_size=MERGE)
    T, extra = TYPES.shape[1], 4
    ids = torch.randint(0, 64, (2, T + extra), generator=torch.Generator().manual_seed(2))
    after = (torch.arange(T, T + extra) + delta[:, None])[:, None].expand(2, 3, extra)  # generated text
    with torch.no_grad():
        full = model(input_ids=ids, position_ids=torch.cat([positions, after], dim=-1))
        state = model.init_state(2, max_len=max_len)
        outs = [model.step(ids[:, :T], state, position_ids=positions)[0]]
        outs += [model.step(ids[:, t : t + 1], state)[0] for t in range(T, T + extra)]
    assert torch.equal(state.rope_delta, delta)
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="step vs forward")


def test_bad_inputs_and_configs() -> None:
    model = edifice.build("tmrope", **edifice.get_spec("tmrope").tiny)
    with pytest.raises(InputError, match="position_ids"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), position_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mrope_section"):
        edifice.build("tmrope", d_model=32, n_heads=2, mrope_section=(2, 3, 4))
    with pytest.raises(ValueError, match="does not match its grid"):
        mrope_position_ids(TYPES, image_grid_thw=torch.tensor([[1, 2, 2]]), video_grid_thw=VIDEOS)


def test_a_wrong_sdpa_breaks_the_parity() -> None:
    hf = _qwen2_vl()
    model = from_qwen2_vl_text(hf).eval()
    positions, _ = mrope_position_ids(TYPES, image_grid_thw=IMAGES, video_grid_thw=VIDEOS, spatial_merge_size=MERGE)
    ids = torch.randint(0, VOCAB, TYPES.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(input_ids=ids, position_ids=positions.transpose(0, 1)).logits
        with edifice.ops.swap("sdpa", unmasked_sdpa):
            assert (model(input_ids=ids, position_ids=positions) - expected).abs().max() > 1e-3
