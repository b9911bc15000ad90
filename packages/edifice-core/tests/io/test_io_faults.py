"""Checkpoints under faults: truncated and bit-flipped files, saves killed mid-write, concurrent saves, schema changes.

The killed and concurrent saves run in forked children (cheap: they inherit the imported torch and the registered
test architecture); every wait on a child has a generous timeout and nothing is timed, so a busy machine only makes
them slower.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import edifice
from edifice import ArchConfig, ArchSpec, CheckpointError, Converter, TensorSpec, field, hookimpl
from edifice.io import checksum, load, read_metadata, save
from edifice.model import Model
from edifice.plugins import get_registry

MODULE = "edifice_io_faults_tiny"
PLUGIN = "io-faults-test"
#: Seconds to wait for a child to reach a point or finish: only a hang comes near it.
WAIT = 120.0
FORK = multiprocessing.get_context("fork")


@dataclasses.dataclass(kw_only=True)
class FaultConfig(ArchConfig):
    """Config of the tiny model saved under faults."""

    arch: str = field("io_fault", "Registry name.")
    schema_version: int = field(2, "Schema 2 renamed 'width' (schema 1) to 'd_model'.")
    d_model: int = field(8, "Width.")
    dropout: float = field(0.5, "Dropout probability (to tell train from eval mode).")

    @classmethod
    def migrate_config(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Schema 1 called ``d_model`` ``width``."""
        data = dict(data)
        data["d_model"] = data.pop("width")
        return data


class Fault(Model):
    """Linear -> dropout, with a persistent buffer."""

    config_class = FaultConfig

    def __init__(self, config: FaultConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.register_buffer("scale", torch.ones(config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, d_model] -> [B, d_model]``."""
        self.check_inputs(x=x)
        return self.drop(self.proj(x) * self.scale)


def from_linear(linear: nn.Linear) -> Fault:
    """Converter: an ``nn.Linear(d, d)``'s weights onto ``io_fault``."""
    model = edifice.build("io_fault", d_model=linear.in_features)
    model.proj.load_state_dict(linear.state_dict())
    return model


class _Plugin:
    @hookimpl
    def register_architectures(self, register: Any) -> None:
        register(
            ArchSpec(
                name="io_fault",
                family="test",
                distribution="edifice-io-faults-test",
                summary="Tiny model for checkpoint fault tests.",
                paper=None,
                config=f"{MODULE}:FaultConfig",
                model=f"{MODULE}:Fault",
                inputs={"x": TensorSpec(("B", "d_model"))},
                outputs={"y": TensorSpec(("B", "d_model"))},
            )
        )

    @hookimpl
    def register_converters(self, register: Any) -> None:
        register(Converter("test.Linear", "io_fault", f"{MODULE}:from_linear"))


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the tiny architecture for one test."""
    monkeypatch.setitem(sys.modules, MODULE, sys.modules[__name__])
    get_registry().register_plugin(_Plugin(), PLUGIN)
    yield
    get_registry().unregister_plugin(PLUGIN)


def _model(seed: int = 0, d_model: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    model = edifice.build("io_fault", d_model=d_model)
    with torch.no_grad():
        model.scale.uniform_(0.5, 1.5)
    return model


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- damaged files ---------------------------------------------------------------------------------------------------
def _header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("where", ["prefix", "header", "header_end", "data", "last_byte"])
def test_truncated_file_raises_checkpoint_error(tmp_path: Path, where: str) -> None:
    path = tmp_path / "m.safetensors"
    save(_model(), path)
    data = path.read_bytes()
    header_end = 8 + _header_length(path)
    cut = {
        "prefix": 5,
        "header": header_end // 2,
        "header_end": header_end,
        "data": (header_end + len(data)) // 2,
        "last_byte": len(data) - 1,
    }[where]
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError):
        load(path)
    with pytest.raises(CheckpointError):
        read_metadata(path)


def test_bytes_appended_to_a_file_are_caught(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save(_model(), path)
    path.write_bytes(path.read_bytes() + b"\0" * 4)
    with pytest.raises(CheckpointError, match="longer than its header says"):
        load(path)


def test_every_sampled_bit_flip_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save(_model(), path)
    good = path.read_bytes()
    header_end = 8 + _header_length(path)
    rng = random.Random(0)
    # Flips in the prefix and header (JSON, metadata, offsets: most of a tiny file) and in the tensor data.
    positions = [rng.randrange(0, header_end) for _ in range(120)]
    positions += [rng.randrange(header_end, len(good)) for _ in range(40)]
    silent = []
    for position in positions:
        bit = rng.randrange(8)
        damaged = bytearray(good)
        damaged[position] ^= 1 << bit
        path.write_bytes(bytes(damaged))
        try:
            load(path)
        except CheckpointError:
            continue
        silent.append((position, bit))
    assert not silent, f"flipped bits (byte, bit) that loaded without a CheckpointError: {silent}"


def test_checksum_names_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save(_model(), path)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0x01  # the last byte of the last tensor
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="checksum does not match"):
        load(path)


def test_file_without_checksum_loads_unverified(tmp_path: Path) -> None:
    """Files written before the checksum existed (format 1) have no ``edifice.checksum`` entry: they load as before."""
    path = tmp_path / "m.safetensors"
    model = _model()
    save(model, path)
    with safetensors.safe_open(str(path), framework="pt") as fh:
        header = dict(fh.metadata())
    del header["edifice.checksum"]
    header["edifice.schema_version"] = "1"
    safetensors.torch.save_file(safetensors.torch.load_file(path), path, metadata=header)
    assert read_metadata(path).checksum is None
    assert _same_weights(load(path), model)
    header["edifice.schema_version"] = "2"  # format 2 without its checksum: damaged (e.g. a flipped bit in the key)
    safetensors.torch.save_file(safetensors.torch.load_file(path), path, metadata=header)
    with pytest.raises(CheckpointError, match=r"checksum.*missing"):
        load(path)


def test_checksum_covers_metadata_and_every_tensor() -> None:
    tensors = {"a": torch.arange(4.0), "b": torch.zeros(2, dtype=torch.int64)}
    base = checksum({"k": "v"}, tensors)
    assert base.startswith("sha256:")
    assert checksum({"k": "w"}, tensors) != base
    assert checksum({"k": "v"}, {**tensors, "a": torch.arange(4.0) + 1}) != base
    assert checksum({"k": "v"}, {**tensors, "a": torch.arange(4.0).reshape(2, 2)}) != base
    assert checksum({"k": "v", "edifice.checksum": "ignored"}, tensors) == base


# -- killed and concurrent saves -------------------------------------------------------------------------------------
def _run_child(target: Callable[..., None], *args: Any) -> multiprocessing.process.BaseProcess:
    process = FORK.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _save_then_hang(path: str, reached: Any, stage: str) -> None:
    """Child: save a different model, stopping forever half-way through writing (``write``) or before the rename."""
    if stage == "write":

        def half_write(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
            blob = safetensors.torch.save(tensors, metadata=metadata)
            with open(filename, "wb") as fh:
                fh.write(blob[: len(blob) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            reached.set()
            threading_sleep_forever()

        safetensors.torch.save_file = half_write  # type: ignore[assignment]
    else:
        real_replace = os.replace

        def stalled_replace(src: Any, dst: Any) -> None:
            reached.set()
            threading_sleep_forever()
            real_replace(src, dst)

        os.replace = stalled_replace  # type: ignore[assignment]
    save(_model(seed=1, d_model=16), path)


def threading_sleep_forever() -> None:
    """Block until killed."""
    import time

    while True:
        time.sleep(60)


@pytest.mark.parametrize("stage", ["write", "rename"])
def test_save_killed_mid_write_leaves_the_previous_file(tmp_path: Path, stage: str) -> None:
    path = tmp_path / "m.safetensors"
    model = _model()
    save(model, path)
    before = path.read_bytes()
    reached = FORK.Event()
    child = _run_child(_save_then_hang, str(path), reached, stage)
    try:
        assert reached.wait(WAIT), f"the child never reached the {stage} stage"
    finally:
        child.kill()  # SIGKILL: no handler, no cleanup
        child.join(WAIT)
    assert child.exitcode == -9
    assert path.read_bytes() == before
    assert _same_weights(load(path), model)
    # What the killed save leaves is its own uniquely named, hidden temporary file, never the target.
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "m.safetensors")
    assert len(leftovers) == 1 and leftovers[0].startswith(".m.safetensors.") and leftovers[0].endswith(".tmp")


def _save_repeatedly(path: str, seed: int, times: int, go: Any) -> None:
    """Child: save its own model to ``path`` ``times`` times."""
    go.wait(WAIT)
    model = _model(seed=seed, d_model=8 + 8 * seed)
    for _ in range(times):
        save(model, path)


def test_concurrent_saves_never_leave_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    models = {seed: _model(seed=seed, d_model=8 + 8 * seed) for seed in (0, 1)}
    save(models[0], path)
    go = FORK.Event()
    children = [_run_child(_save_repeatedly, str(path), seed, 15, go) for seed in models]
    go.set()
    seen = set()
    while any(child.is_alive() for child in children):
        loaded = load(path)  # a reader racing the writers: always one complete file
        seen.add(next(s for s, m in models.items() if _same_weights(loaded, m)))
    for child in children:
        child.join(WAIT)
        assert child.exitcode == 0
    final = load(path)
    assert any(_same_weights(final, m) for m in models.values())
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert seen  # the reader saw at least one complete file


# -- schema changes --------------------------------------------------------------------------------------------------
def _with_schema(path: Path, version: int, config: dict[str, Any]) -> None:
    with safetensors.safe_open(str(path), framework="pt") as fh:
        header = dict(fh.metadata())
    tensors = safetensors.torch.load_file(path)
    header["edifice.config"] = json.dumps(config)
    header["edifice.config_schema_version"] = str(version)
    header["edifice.checksum"] = checksum(header, tensors)
    safetensors.torch.save_file(tensors, path, metadata=header)


def test_older_schema_migrates_through_the_config_hook(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = _model()
    save(model, path)
    old = {**model.config.to_dict(), "schema_version": 1}
    old["width"] = old.pop("d_model")
    _with_schema(path, 1, old)
    loaded = load(path)
    assert loaded.config == model.config and loaded.config.schema_version == 2
    assert _same_weights(loaded, model)


def test_failed_migration_names_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = _model()
    save(model, path)
    _with_schema(path, 1, {**model.config.to_dict(), "schema_version": 1})  # no 'width': the hook raises KeyError
    with pytest.raises(CheckpointError, match=r"from schema 1 to 2 failed: KeyError"):
        load(path)


def test_newer_schema_names_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = _model()
    save(model, path)
    _with_schema(path, 3, {**model.config.to_dict(), "schema_version": 3})
    with pytest.raises(CheckpointError, match=r"config schema 3 of 'io_fault' is newer than the installed one \(2\)"):
        load(path)


# -- train/eval mode -------------------------------------------------------------------------------------------------
def test_load_and_convert_return_eval_mode(tmp_path: Path) -> None:
    """Like transformers' from_pretrained: a loaded or converted model is ready for inference (dropout off)."""
    path = tmp_path / "m.safetensors"
    save(_model().train(), path)
    loaded = load(path)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    x = torch.randn(3, 8)
    torch.testing.assert_close(loaded(x), loaded(x))
    converted = edifice.convert("test.Linear", nn.Linear(8, 8))
    assert not converted.training
