"""bimamba: parity with two passes of transformers' ``MambaMixer`` (Vim, Algorithm 1), padding, chunking, config.

The reference is assembled from transformers' own modules: per layer ``h + Mixer_f(Norm(h)) + flip(Mixer_b(flip(
Norm(h))))`` with ``MambaRMSNorm``/``MambaMixer`` of two random ``MambaModel``s (the backward one given the forward
one's ``in_proj`` and ``out_proj`` when the projections are shared, as in Vim's block). Their weights are mapped onto
``bimamba`` with the Mamba converter's key map (``convert_mamba.map_mamba_state_dict``); the mixer keys then only
move under ``forward_mixer.`` / ``backward_mixer.``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

import edifice
from edifice.testing import signature
from edifice.testing.tol import FP32, SCAN, assert_close, compare
from edifice_ssm.bimamba import BiMamba, BiMambaMixer, reverse_valid
from edifice_ssm.convert_mamba import mamba_config, map_mamba_state_dict

transformers = pytest.importorskip("transformers")
HFMambaConfig, HFMambaModel = transformers.MambaConfig, transformers.MambaModel  # resolve the lazy import now

compare(torch.zeros(1), torch.ones(1))  # pay the first failing comparison's torch._refs import at collection

VOCAB = 40
_MIXER_KEY = re.compile(r"^layers\.(\d+)\.mixer\.(.+)$")


def _hf(seed: int) -> Any:
    config = HFMambaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=2,
        conv_kernel=3,
        expand=2,
        time_step_rank=3,
        use_bias=False,
        use_cache=False,
    )
    torch.manual_seed(seed)
    model = HFMambaModel(config).eval()
    with torch.no_grad():  # random gains and skips make the norms and D observable
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                p.uniform_(0.5, 1.5)
    return model


def _pair(share: bool) -> tuple[Any, Any]:
    """Two random transformers Mamba models: the forward and the backward direction."""
    forward, backward = _hf(seed=1), _hf(seed=2)
    if share:  # Vim: one in_proj and one out_proj for both directions
        with torch.no_grad():
            for lf, lb in zip(forward.layers, backward.layers, strict=True):
                lb.mixer.in_proj.weight.copy_(lf.mixer.in_proj.weight)
                lb.mixer.out_proj.weight.copy_(lf.mixer.out_proj.weight)
    return forward, backward


def _convert(forward: Any, backward: Any, **overrides: Any) -> BiMamba:
    """``bimamba`` with the pair's weights: the Mamba key map, then each mixer under its direction."""
    fields = mamba_config(forward.config).to_dict()
    for key in ("arch", "scan", "schema_version"):
        fields.pop(key)
    model = edifice.build("bimamba", **{**fields, **overrides})
    mapped = map_mamba_state_dict(forward.state_dict(), model.config)
    weights = {_MIXER_KEY.sub(r"layers.\1.mixer.forward_mixer.\2", k): v for k, v in mapped.items()}
    for key, value in map_mamba_state_dict(backward.state_dict(), model.config).items():
        if _MIXER_KEY.match(key):
            weights[_MIXER_KEY.sub(r"layers.\1.mixer.backward_mixer.\2", key)] = value
    model.load_state_dict(weights, strict=True)
    assert isinstance(model, BiMamba)
    return model.eval()


def _reference(forward: Any, backward: Any, ids: torch.Tensor) -> torch.Tensor:
    """Vim's Algorithm 1 from transformers' modules: logits ``[B, T, VOCAB]`` (LM head tied to the embedding)."""
    h = forward.embeddings(ids)
    for lf, lb in zip(forward.layers, backward.layers, strict=True):
        n = lf.norm(h)
        h = h + lf.mixer(n) + lb.mixer(n.flip(1)).flip(1)
    return forward.norm_f(h) @ forward.embeddings.weight.T  # type: ignore[no-any-return]


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@signature("bimamba")
@pytest.mark.parametrize("share", [True, False], ids=["shared_projections", "independent_mixers"])
def test_bimamba_matches_two_transformers_mixer_passes(share: bool) -> None:
    forward, backward = _pair(share)
    model = _convert(forward, backward, share_projections=share)
    chunked = _convert(forward, backward, share_projections=share, chunk_size=4)
    ids = _ids(2, 11, seed=3)
    lengths = (11, 7)
    mask = torch.arange(11)[None, :] < torch.tensor(lengths)[:, None]  # the second row right-padded
    with torch.no_grad():
        want = _reference(forward, backward, ids)
        assert_close(model(input_ids=ids), want, FP32, name="forward")
        assert_close(chunked(input_ids=ids), want, SCAN, name="chunked, carrying each direction's state")
        padded = chunked(input_ids=ids, attention_mask=mask)
        for row, length in enumerate(lengths):  # each row against the reference run on it alone
            alone = _reference(forward, backward, ids[row : row + 1, :length])
            assert_close(padded[row : row + 1, :length], alone, SCAN, name=f"right-padded row {row}")


def test_mean_and_concat_combine_the_two_directions() -> None:
    forward, backward = _pair(share=True)
    ids = _ids(1, 9, seed=4)
    with torch.no_grad():
        summed = _convert(forward, backward, combine="sum")
        mean = _convert(forward, backward, combine="mean")
        mixer_sum, mixer_mean = summed.layers[0].mixer, mean.layers[0].mixer
        h = torch.randn(1, 9, 16)
        assert_close(mixer_mean(h), 0.5 * mixer_sum(h), FP32, name="mean = sum / 2")
        torch.manual_seed(5)
        concat = edifice.build("bimamba", d_model=16, n_layers=1, d_state=4, d_conv=3, combine="concat").eval()
        mixer = concat.layers[0].mixer
        assert isinstance(mixer, BiMambaMixer) and mixer.combine_proj is not None
        y_f = mixer.forward_mixer(h)
        y_b = mixer.backward_mixer(h.flip(1)).flip(1)
        assert_close(mixer(h), mixer.combine_proj(torch.cat([y_f, y_b], -1)), FP32, name="concat")
    assert summed(input_ids=ids).shape == (1, 9, VOCAB)


def test_reverse_valid_reverses_each_rows_valid_tokens_and_keeps_pads_in_place() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    index = reverse_valid(mask)
    assert index.tolist() == [[2, 1, 0, 3, 4], [0, 1, 4, 3, 2], [4, 1, 2, 3, 0], [4, 3, 2, 1, 0]]
    assert torch.equal(index.gather(1, index), torch.arange(5).expand(4, 5))  # an involution


def test_every_position_sees_the_future() -> None:
    # Not causal: the backward scan carries information from later positions to earlier ones.
    torch.manual_seed(6)
    model = edifice.build("bimamba", d_model=16, n_layers=1, d_state=4, d_conv=3, d_in=5).eval()
    x = torch.randn(1, 8, 5)
    moved = x.clone()
    moved[:, -1] += 1.0
    with torch.no_grad():
        changed = (model(x=moved) - model(x=x)).abs().amax(-1)[0]
    assert (changed[:-1] > 1e-6).all()


def test_bimamba_cannot_step_and_validates_its_config() -> None:
    torch.manual_seed(7)
    model = edifice.build("bimamba", d_model=8, n_layers=1, d_state=2, d_conv=2)
    with pytest.raises(TypeError, match="bidirectional"):
        model.init_state(1)
    with pytest.raises(TypeError, match="bidirectional"):
        model.step(torch.randn(1, 1, 8), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot step"):
        model.layers[0].mixer(torch.randn(1, 2, 8), state=object())
    with pytest.raises(edifice.ConfigError, match="combine"):
        edifice.config("bimamba", combine="product")
    with pytest.raises(edifice.ConfigError, match="bias"):
        edifice.config("bimamba", bias=True)  # a shared out_proj's bias would be summed twice
    assert edifice.config("bimamba", bias=True, combine="mean").bias
    with pytest.raises(edifice.ConfigError, match="chunk_size"):
        edifice.config("bimamba", chunk_size=0)
    config = edifice.config("bimamba", state_size=8, hidden_size=24, num_layers=1)
    assert (config.d_state, config.d_model, config.n_layers) == (8, 24, 1)


def test_initialisation_scales_each_distinct_out_proj_once() -> None:
    # Default Linear bound 1/sqrt(E), divided by sqrt(n_layers) once even when the two directions share out_proj.
    for share in (True, False):
        torch.manual_seed(9)
        model = edifice.build("bimamba", d_model=32, n_layers=4, d_state=2, d_conv=2, share_projections=share)
        bound = 1 / (64**0.5) / (4**0.5)
        for layer in model.layers:
            for mixer in (layer.mixer.forward_mixer, layer.mixer.backward_mixer):
                w = mixer.out_proj.weight
                assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.9 * bound
                assert torch.allclose(mixer.A_log.exp(), torch.arange(1.0, 3.0).expand(64, 2))


def test_shared_projections_are_one_tensor_and_survive_save_and_load(tmp_path: Any) -> None:
    torch.manual_seed(8)
    model = edifice.build("bimamba", d_model=8, n_layers=1, d_state=2, d_conv=2, d_in=3).eval()
    mixer = model.layers[0].mixer
    assert mixer.backward_mixer.in_proj is mixer.forward_mixer.in_proj
    assert mixer.backward_mixer.out_proj is mixer.forward_mixer.out_proj
    assert mixer.backward_mixer.conv1d is not mixer.forward_mixer.conv1d
    edifice.save(model, tmp_path / "bimamba.safetensors")
    loaded = edifice.load(tmp_path / "bimamba.safetensors").eval()
    again = loaded.layers[0].mixer
    assert again.backward_mixer.in_proj.weight is again.forward_mixer.in_proj.weight
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        assert torch.equal(loaded(x=x), model(x=x))
