"""edifice.save / edifice.load: round trips, tied weights, buffers, dtype/device, error reports and file safety."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import edifice
from edifice import ArchConfig, ArchSpec, CheckpointError, TensorSpec, UnknownArchitecture, field, hookimpl
from edifice.io import FORMAT_VERSION, TensorEntry, checksum, load, read_metadata, save
from edifice.model import Model
from edifice.plugins import get_registry

# The specs' import strings need a plain module name; the fixture makes this module importable under it.
MODULE = "edifice_io_tiny"
PLUGIN = "io-test"
BUILDS: list[tuple[str, str]] = []  # (class name, device type) of every model constructed


@dataclasses.dataclass(kw_only=True)
class TinyIOConfig(ArchConfig):
    """Config of the tiny save/load test model."""

    arch: str = field("tiny_io", "Registry name.")
    vocab_size: int = field(11, "Vocabulary size.")
    d_model: int = field(4, "Width.")
    max_len: int = field(16, "Rows of the sinusoidal position table.")
    tie_embeddings: bool = field(True, "Share the embedding matrix with the output projection.")

    def validate(self) -> None:
        """Sizes are positive."""
        self.check_positive("vocab_size", "d_model", "max_len")

    @classmethod
    def migrate_config(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Schema 0 called ``d_model`` ``width``."""
        assert from_version == 0
        data = dict(data)
        data["d_model"] = data.pop("width")
        return data


def positions(max_len: int, d_model: int) -> torch.Tensor:
    """The non-persistent table: ``pos[t, i] = sin(t * (i + 1) / d_model)``."""
    t = torch.arange(max_len, dtype=torch.float32)[:, None]
    i = torch.arange(d_model, dtype=torch.float32)[None, :]
    return torch.sin(t * (i + 1) / d_model)


class TinyIO(Model):
    """Embedding -> tanh(Linear) * scale -> tied head; a persistent float and int buffer and a recomputed table."""

    config_class = TinyIOConfig

    def __init__(self, config: TinyIOConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.mix = nn.Linear(config.d_model, config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.ones(config.d_model))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("pos", positions(config.max_len, config.d_model), persistent=False)
        BUILDS.append((type(self).__name__, self.mix.weight.device.type))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)``."""
        self.check_inputs(input_ids=input_ids)
        h = self.embed(input_ids) + self.pos[: input_ids.shape[1]]  # (B, T, D)
        return self.head(torch.tanh(self.mix(h)) * self.scale)


class TinyIOHooked(TinyIO):
    """Same model, able to refill its non-persistent table in place (so load never builds it for real)."""

    def init_non_persistent_buffers(self) -> None:
        """Recompute ``pos`` into the allocated buffer."""
        self.pos.copy_(positions(self.config.max_len, self.config.d_model))


def _spec(name: str, model: str) -> ArchSpec:
    return ArchSpec(
        name=name,
        family="test",
        distribution="edifice-io-test",
        summary="Tiny model for save/load tests.",
        paper=None,
        config=f"{MODULE}:TinyIOConfig",
        model=f"{MODULE}:{model}",
        inputs={"input_ids": TensorSpec(("B", "T"), dtype="int64", domain="int[0, vocab_size)")},
        outputs={"logits": TensorSpec(("B", "T", "vocab_size"))},
    )


class _Plugin:
    @hookimpl
    def register_architectures(self, register: Any) -> None:
        register(_spec("tiny_io", "TinyIO"))
        register(_spec("tiny_io_hooked", "TinyIOHooked"))


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Register the tiny architectures for one test."""
    monkeypatch.setitem(sys.modules, MODULE, sys.modules[__name__])
    registry = get_registry()
    registry.register_plugin(_Plugin(), PLUGIN)
    BUILDS.clear()
    yield
    registry.unregister_plugin(PLUGIN)


def _trained(name: str = "tiny_io", **overrides: Any) -> nn.Module:
    """A built model whose every parameter and persistent buffer holds seeded, non-default values."""
    torch.manual_seed(0)
    model = edifice.build(name, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model.scale.uniform_(0.5, 1.5)
        model.steps.fill_(7)
    return model


def _ids() -> torch.Tensor:
    return torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))


def _rewrite(
    path: Path, *, drop: tuple[str, ...] = (), add: dict[str, torch.Tensor] | None = None, **meta: str
) -> None:
    """Rewrite a checkpoint with tensors dropped/added/replaced and metadata entries changed (checksum updated)."""
    with safetensors.safe_open(str(path), framework="pt") as fh:
        header = dict(fh.metadata())
    tensors = {k: v for k, v in safetensors.torch.load_file(path).items() if k not in drop}
    tensors.update(add or {})
    header.update(meta)
    header["edifice.checksum"] = checksum(header, tensors)
    safetensors.torch.save_file(tensors, path, metadata=header)


# -- round trips -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny_io", "tiny_io_hooked"])
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    model = _trained(name).eval()
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors").eval()
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert torch.equal(loaded(_ids()), model(_ids()))
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.steps.dtype == torch.int64
    assert int(loaded.steps) == 7


def test_compiled_model_saves_as_the_module_it_wraps(tmp_path: Path) -> None:
    model = _trained()
    save(torch.compile(model, backend="eager"), tmp_path / "m.safetensors")
    assert set(read_metadata(tmp_path / "m.safetensors").tensors) == set(model.state_dict()) - {"head.weight"}


def test_tied_weights_are_stored_once_and_retied(tmp_path: Path) -> None:
    save(_trained(), tmp_path / "m.safetensors")
    meta = read_metadata(tmp_path / "m.safetensors")
    assert meta.tied == (("embed.weight", "head.weight"),)
    assert set(meta.tensors) == {"embed.weight", "mix.weight", "mix.bias", "scale", "steps"}
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.head.weight is loaded.embed.weight
    assert len(list(loaded.parameters())) == 3  # embed (= head), mix.weight, mix.bias


def test_untied_weights_stay_separate(tmp_path: Path) -> None:
    model = _trained(tie_embeddings=False)
    save(model, tmp_path / "m.safetensors")
    assert read_metadata(tmp_path / "m.safetensors").tied == ()
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.head.weight is not loaded.embed.weight
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_metadata_records_arch_config_and_versions(tmp_path: Path) -> None:
    model = _trained(d_model=6)
    save(model, tmp_path / "m.safetensors", metadata={"run": "abc"})
    meta = read_metadata(tmp_path / "m.safetensors")
    assert meta.arch == "tiny_io"
    assert meta.config == {**json.loads(model.config.to_json())}
    assert meta.config["d_model"] == 6
    assert (meta.schema_version, meta.config_schema_version) == (FORMAT_VERSION, 1)
    assert set(meta.versions) == {"edifice-core", "edifice-io-test", "torch"}
    assert meta.versions["torch"] == torch.__version__
    assert meta.versions["edifice-io-test"] is None  # not an installed distribution
    assert meta.buffers == {"pos": "float32"}
    assert meta.tensors["steps"] == TensorEntry("int64", ())
    assert meta.tensors["mix.weight"] == TensorEntry("float32", (6, 6))
    assert meta.extra == {"run": "abc"}


@pytest.mark.parametrize(("name", "builds"), [("tiny_io", ["meta", "cpu"]), ("tiny_io_hooked", ["meta"])])
def test_non_persistent_buffers_are_recomputed(tmp_path: Path, name: str, builds: list[str]) -> None:
    save(_trained(name, max_len=5), tmp_path / "m.safetensors")
    BUILDS.clear()
    loaded = load(tmp_path / "m.safetensors")
    # Only the model that can refill its table in place avoids a real (randomly initialised) build.
    assert [device for _, device in BUILDS] == builds
    want = [[math.sin(t * (i + 1) / 4) for i in range(4)] for t in range(5)]
    torch.testing.assert_close(loaded.pos, torch.tensor(want), rtol=0, atol=1e-6)


# -- dtype and device ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny_io", "tiny_io_hooked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16"])
def test_dtype_converts_floating_tensors_only(tmp_path: Path, name: str, dtype: torch.dtype | str) -> None:
    model = _trained(name)
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors", dtype=dtype)
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    for key, value in loaded.state_dict().items():
        original = model.state_dict()[key]
        expected = original.to(want) if original.is_floating_point() else original
        assert value.dtype == expected.dtype, key
        assert torch.equal(value, expected), key
    assert loaded.pos.dtype == want
    assert loaded.head.weight is loaded.embed.weight


@pytest.mark.parametrize("name", ["tiny_io", "tiny_io_hooked"])
def test_saved_dtypes_come_back_without_dtype_argument(tmp_path: Path, name: str) -> None:
    model = _trained(name).to(torch.bfloat16)
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.pos.dtype == torch.bfloat16
    assert loaded.steps.dtype == torch.int64
    assert torch.equal(loaded(_ids()), model(_ids()))


def test_non_floating_dtype_is_refused(tmp_path: Path) -> None:
    save(_trained(), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="floating dtype, got int64"):
        load(tmp_path / "m.safetensors", dtype=torch.int64)


@pytest.mark.parametrize("name", ["tiny_io", "tiny_io_hooked"])
@pytest.mark.parametrize("device", ["meta", torch.device("cpu")])
def test_device_argument_places_every_tensor(tmp_path: Path, name: str, device: str | torch.device) -> None:
    save(_trained(name), tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors", device=device)
    devices = {t.device.type for t in [*loaded.parameters(), *loaded.buffers()]}
    assert devices == {torch.device(device).type}
    assert loaded.head.weight is loaded.embed.weight


# -- error reports ---------------------------------------------------------------------------------------------------
def test_report_names_every_missing_unexpected_and_misshaped_tensor(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save(_trained(), path)
    _rewrite(
        path,
        drop=("mix.bias", "scale", "mix.weight"),
        add={"extra.weight": torch.zeros(3), "mix.weight": torch.zeros(4, 5)},
    )
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert "missing from the checkpoint (2)" in message
    assert "mix.bias [4]" in message
    assert "scale [4]" in message
    assert "unexpected in the checkpoint (1)" in message
    assert "extra.weight [3]" in message
    assert "mix.weight: [4, 5] in the checkpoint, [4, 4] in the model" in message
    # Mis-shaped tensors stay an error when missing and unexpected ones are tolerated.
    with pytest.raises(CheckpointError, match=r"mis-shaped \(1\)"):
        load(path, strict=False)


def test_non_strict_load_keeps_missing_tensors_initialised(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = _trained()
    save(model, path)
    _rewrite(path, drop=("mix.bias",), add={"extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"mix\.bias"):
        load(path)
    loaded = load(path, strict=False)
    assert not loaded.mix.bias.is_meta
    assert torch.isfinite(loaded.mix.bias).all()
    assert torch.equal(loaded.mix.weight, model.mix.weight)
    assert loaded.head.weight is loaded.embed.weight
    assert not hasattr(loaded, "extra")


def test_file_without_edifice_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no Edifice metadata"):
        load(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 4,
        (10**9).to_bytes(8, "little"),
        (5).to_bytes(8, "little") + b"notjs",
        (2).to_bytes(8, "little") + b"[]",
    ],
)
def test_non_safetensors_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load(path)


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(_trained().state_dict(), path)
    with pytest.raises(CheckpointError, match="never loaded"):
        load(path)


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ({"edifice.schema_version": str(FORMAT_VERSION + 1)}, "newer Edifice"),
        ({"edifice.schema_version": "one"}, "not an integer"),
        ({"edifice.tied": "[[oops"}, "not valid JSON"),
        ({"edifice.config": "[1, 2]"}, "should hold a JSON dict"),
        ({"edifice.config_schema_version": "7"}, "newer than the installed one"),
        ({"edifice.config": json.dumps({"arch": "tiny_io", "d_model": -1})}, "does not validate"),
    ],
)
def test_bad_metadata_is_reported(tmp_path: Path, entries: dict[str, str], match: str) -> None:
    path = tmp_path / "m.safetensors"
    save(_trained(), path)
    _rewrite(path, **entries)
    with pytest.raises(CheckpointError, match=match):
        load(path)


def test_older_config_schema_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    model = _trained()
    save(model, path)
    old = {**model.config.to_dict(), "schema_version": 0}
    old["width"] = old.pop("d_model")
    _rewrite(path, **{"edifice.config": json.dumps(old), "edifice.config_schema_version": "0"})
    loaded = load(path)
    assert loaded.config == model.config
    monkeypatch.delattr(TinyIOConfig, "migrate_config")  # ArchConfig's, from schema_changes, has nothing recorded
    with pytest.raises(CheckpointError, match=r"from schema 0 to 1 failed: .*records no migration to schema 1"):
        load(path)


def test_unknown_architecture_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save(_trained(), path)
    get_registry().unregister_plugin(PLUGIN)
    with pytest.raises(UnknownArchitecture, match=r"m\.safetensors: checkpoint of 'tiny_io'"):
        load(path)


# -- writing safely --------------------------------------------------------------------------------------------------
def _failing_writer(filename: str | os.PathLike[str]) -> None:
    Path(filename).write_bytes(b"partial")
    raise OSError("disk full")


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    save(_trained(), path)
    before = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", lambda tensors, filename, metadata: _failing_writer(filename))
    with pytest.raises(OSError, match="disk full"):
        save(_trained(d_model=6), path)
    with pytest.raises(OSError, match="disk full"):
        save(_trained(), tmp_path / "new.safetensors")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save(_trained(), path)
    assert save(_trained(d_model=6), str(path)) == path
    assert load(path).config.d_model == 6
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    save(_trained(), path)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("load must not unpickle")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, forbidden)
    assert load(path).config.arch == "tiny_io"


def test_save_refuses_what_it_cannot_store(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match="expected an Edifice model"):
        save(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match="meta device"):
        save(edifice.build("tiny_io", device="meta"), path)
    with pytest.raises(ValueError, match="reserved"):
        save(_trained(), path, metadata={"edifice.arch": "x"})
    with pytest.raises(TypeError, match="str to str"):
        save(_trained(), path, metadata={"step": 3})  # type: ignore[dict-item]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save(_trained(), tmp_path / "missing" / "m.safetensors")
    model = _trained()
    model.register_buffer("row", model.mix.weight.detach()[1])  # a view into mix.weight's memory
    with pytest.raises(CheckpointError, match="overlapping views of the same memory"):
        save(model, path)
    assert os.listdir(tmp_path) == []


def test_disjoint_views_of_one_buffer_are_saved_apart(tmp_path: Path) -> None:
    # cuDNN packs nn.LSTM's weights into one buffer on CUDA: each parameter is a disjoint slice of it.
    model = _trained()
    packed = torch.cat([model.mix.weight.detach().flatten(), model.mix.bias.detach()])
    with torch.no_grad():
        n = model.mix.weight.numel()
        model.mix.weight.set_(packed.untyped_storage(), 0, model.mix.weight.shape)
        model.mix.bias.set_(packed.untyped_storage(), n, model.mix.bias.shape)
    assert model.mix.weight.untyped_storage().data_ptr() == model.mix.bias.untyped_storage().data_ptr()
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["tiny_io", "tiny_io_hooked"])
def test_load_onto_cuda_and_save_from_it(tmp_path: Path, name: str) -> None:
    model = _trained(name).eval()
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors", device="cuda", dtype=torch.bfloat16).eval()
    assert {t.device.type for t in [*loaded.parameters(), *loaded.buffers()]} == {"cuda"}
    assert loaded.head.weight is loaded.embed.weight
    reference = model.to(device="cuda", dtype=torch.bfloat16)
    assert torch.equal(loaded(_ids().cuda()), reference(_ids().cuda()))
    save(loaded, tmp_path / "cuda.safetensors")
    back = load(tmp_path / "cuda.safetensors")
    assert back.mix.weight.device.type == "cpu"
    assert torch.equal(back.mix.weight, loaded.mix.weight.cpu())
