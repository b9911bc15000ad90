"""Save and load Edifice models as safetensors files that carry their architecture and config.

A checkpoint is a plain safetensors file (raw tensor bytes and a JSON header; nothing is ever unpickled) whose
``__metadata__`` holds, besides any user entries given to :func:`save`:

==============================  =================================================================================
``format``                      ``"pt"``, what other safetensors tools expect of PyTorch tensors
``edifice.schema_version``      version of this file format (:data:`FORMAT_VERSION`)
``edifice.arch``                registry name of the architecture
``edifice.config``              the config as JSON (:meth:`ArchConfig.to_json`)
``edifice.config_schema_version``  the config's ``schema_version``
``edifice.versions``            JSON ``{distribution: version}`` for edifice-core, the owning distribution and torch
``edifice.tied``                JSON ``[[kept, alias, ...], ...]``: state-dict keys sharing one tensor, stored once
``edifice.buffers``             JSON ``{name: dtype}`` of the floating non-persistent buffers (recomputed on load)
``edifice.checksum``            ``"sha256:<hex>"`` of every other metadata entry and every tensor (:func:`checksum`)
==============================  =================================================================================

Faults: a file that is not safetensors, is truncated, or whose bytes changed (a flipped bit in the header or in any
tensor) raises :class:`~edifice.errors.CheckpointError`: the header's tensor offsets must cover the file exactly, and
the checksum is verified on every load. Files written before the checksum existed (format 1, no
``edifice.checksum`` entry) load unverified. Writes go to a uniquely named temporary file in the target's
directory, are flushed to disk, and replace the target in one rename (then the directory entry is flushed too), so
a save killed at any point leaves the previous file intact, and concurrent saves to one path leave one complete
file. :func:`load` reads the header and the tensors through one open file, so a save racing it cannot pair one
file's header with another's tensors.

Loading rebuilds the config (refusing a newer schema; an older one goes through the config class's
``migrate_config(data, from_version) -> data`` classmethod, the per-architecture migration hook, which by default
applies the changes the class records in ``schema_changes``; when it fails, the error names both versions), builds
the model on the meta device, checks every key and shape against the file (one
:class:`~edifice.errors.CheckpointError` names everything missing, unexpected or
mis-shaped), then assigns the file's tensors (``load_state_dict(assign=True)``), re-ties shared parameters and packs
``nn.LSTM``/``nn.GRU`` weights back into their one cuDNN buffer.

Non-persistent buffers (RoPE tables, causal masks) are not in the file and must be recomputed. A module that owns
some can implement ``init_non_persistent_buffers()``, which fills them *in place* once they are allocated,
uninitialised, on the target device (like ``reset_parameters`` fills parameters). When every owning module has this
hook the model is only ever built on the meta device; otherwise (and when a non-strict load leaves tensors missing)
the model is built for real on the target device so its constructor computes them, and the file's tensors replace
the fresh parameters. Either way, floating non-persistent buffers end in the dtype they had when saved (or ``dtype``).

The loaded model is in eval mode, like ``transformers``' ``from_pretrained``: dropout is off and stochastic layers
are deterministic until ``model.train()`` is called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import struct
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

import edifice
from edifice.config import ArchConfig
from edifice.dtypes import dtype_name, to_dtype
from edifice.errors import CheckpointError, ConfigError, UnknownArchitecture
from edifice.registry import build, config_class, get_spec

__all__ = ["FORMAT_VERSION", "CheckpointMetadata", "TensorEntry", "checksum", "load", "read_metadata", "save"]

#: Version of the checkpoint layout written by :func:`save`; :func:`load` reads this version and older ones.
#: Format 2 added ``edifice.checksum`` (required from format 2 on; a format-1 file loads unverified).
FORMAT_VERSION = 2
#: The first format whose files must carry a checksum.
_CHECKSUM_SINCE = 2

_ARCH = "edifice.arch"
_CONFIG = "edifice.config"
_SCHEMA = "edifice.schema_version"
_CONFIG_SCHEMA = "edifice.config_schema_version"
_VERSIONS = "edifice.versions"
_TIED = "edifice.tied"
_BUFFERS = "edifice.buffers"
_CHECKSUM = "edifice.checksum"
_HASH = "sha256"
_RESERVED_PREFIX = "edifice."
#: Optional module method that fills the module's non-persistent buffers in place (see the module docstring).
_INIT_HOOK = "init_non_persistent_buffers"

# safetensors refuses headers above 100 MB; a larger length prefix means the file is something else.
_MAX_HEADER_BYTES = 100_000_000
_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor stored in a checkpoint: its dtype name and shape (read from the header, no data loaded)."""

    dtype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class CheckpointMetadata:
    """What a checkpoint's header says: architecture, config, versions, tied groups and stored tensors."""

    path: Path
    arch: str
    config: dict[str, Any]
    schema_version: int
    config_schema_version: int
    versions: dict[str, str | None]
    tied: tuple[tuple[str, ...], ...]
    buffers: dict[str, str]
    tensors: dict[str, TensorEntry]
    extra: dict[str, str]
    checksum: str | None = None
    raw: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    offsets: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict, repr=False, compare=False)


# -- save ------------------------------------------------------------------------------------------------------------
def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s weights, architecture and config to the safetensors file ``path`` (atomically)."""
    # torch.compile wraps the module and prefixes every state-dict key with "_orig_mod."; save the module itself.
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module):
        model = original
    config = getattr(model, "config", None)
    if not isinstance(config, ArchConfig):
        raise TypeError(
            f"save: expected an Edifice model (an nn.Module with an ArchConfig in .config, as edifice.build returns), "
            f"got {type(model).__name__}"
        )
    spec = get_spec(config.arch)
    extra = _check_user_metadata(metadata or {})
    state = model.state_dict()
    on_meta = [key for key, tensor in state.items() if tensor.is_meta]
    if on_meta:
        raise CheckpointError(f"save: {config.arch} has tensors on the meta device (no data to save): {_few(on_meta)}")
    tied = _tied_groups(state)
    aliases = {alias for group in tied for alias in group[1:]}
    tensors = {key: tensor.detach().contiguous() for key, tensor in state.items() if key not in aliases}
    _separate_packed_views(config.arch, tensors)
    header = {
        **extra,
        "format": "pt",
        _SCHEMA: str(FORMAT_VERSION),
        _ARCH: config.arch,
        _CONFIG: config.to_json(),
        _CONFIG_SCHEMA: str(config.schema_version),
        _VERSIONS: json.dumps(_versions(spec.distribution), sort_keys=True),
        _TIED: json.dumps([list(group) for group in tied]),
        _BUFFERS: json.dumps(
            {
                name: dtype_name(buf.dtype)
                for name, buf in _non_persistent_buffers(model).items()
                if buf.is_floating_point()
            },
            sort_keys=True,
        ),
    }
    header[_CHECKSUM] = checksum(header, tensors)
    target = Path(path)
    _atomic_write(target, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=header))
    return target


def checksum(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """``"sha256:<hex>"`` over the metadata entries (but the checksum's own) and every tensor's name, dtype, shape and
    bytes, in sorted order: any flipped bit of a checkpoint changes it."""
    digest = hashlib.new(_HASH)
    entries = {key: value for key, value in metadata.items() if key != _CHECKSUM}
    digest.update(json.dumps(entries, sort_keys=True).encode())
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(json.dumps([key, dtype_name(tensor.dtype), list(tensor.shape)]).encode())
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            digest.update(data.view(torch.uint8).numpy().data)
    return f"{_HASH}:{digest.hexdigest()}"


def _check_user_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"save: metadata must map str to str, got {key!r}: {type(value).__name__}")
        if key == "format" or key.startswith(_RESERVED_PREFIX):
            raise ValueError(f"save: metadata key {key!r} is reserved (keys 'format' and 'edifice.*' are Edifice's)")
    return dict(metadata)


def _tied_groups(state: Mapping[str, torch.Tensor]) -> list[tuple[str, ...]]:
    """Groups of state-dict keys that are the same view of the same memory (tied weights), in state-dict order."""
    groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for key, tensor in state.items():
        if tensor.numel() == 0:
            # Empty tensors may all report data pointer 0; they cannot share anything meaningful.
            continue
        view = (
            tensor.device,
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        groups[view].append(key)
    return [tuple(keys) for keys in groups.values() if len(keys) > 1]


def _separate_packed_views(arch: str, tensors: dict[str, torch.Tensor]) -> None:
    """Copy disjoint views of one storage apart (in place in ``tensors``); refuse views whose memory overlaps.

    Disjoint views are independent tensors packed into one buffer (cuDNN flattens ``nn.LSTM``/``nn.GRU`` weights
    into one on CUDA), so each is stored on its own. Overlapping distinct views are partial ties: storing them
    separately would silently untie them on load.
    """
    by_storage: dict[tuple[torch.device, int], list[str]] = defaultdict(list)
    for key, tensor in tensors.items():
        if tensor.numel():
            by_storage[(tensor.device, tensor.untyped_storage().data_ptr())].append(key)
    overlapping = []
    for keys in by_storage.values():
        if len(keys) == 1:
            continue
        spans = sorted((_byte_span(tensors[key]), key) for key in keys)
        if any(later[0][0] < earlier[0][1] for earlier, later in itertools.pairwise(spans)):
            overlapping.append(keys)
            continue
        for key in keys:
            tensors[key] = tensors[key].clone()
    if overlapping:
        raise CheckpointError(
            f"save: {arch} has tensors that are overlapping views of the same memory: {overlapping}. Edifice stores "
            "tied tensors only when they are the same view; register one tensor and derive the other in forward."
        )


def _byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    """The ``[start, end)`` bytes of its storage that ``tensor`` can touch (a strided view's bounding range)."""
    size = tensor.element_size()
    last = sum(int(n - 1) * int(stride) for n, stride in zip(tensor.shape, tensor.stride(), strict=True))
    start = int(tensor.storage_offset()) * size
    return start, start + (last + 1) * size


def _versions(distribution: str) -> dict[str, str | None]:
    return {
        "edifice-core": _dist_version("edifice-core") or edifice.__version__,
        distribution: _dist_version(distribution),
        "torch": torch.__version__,
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the target's directory, then rename it over the target in one step."""
    if not target.parent.is_dir():
        raise FileNotFoundError(f"save: directory {str(target.parent)!r} does not exist")
    # A name no other writer uses (concurrent saves to one path each rename their own complete file).
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        # Flush the data to disk before the rename, so a crash cannot leave a renamed but empty file.
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Flush the directory entry too, so that the rename itself survives a power loss (POSIX; not possible on Windows).
    if os.name == "posix":
        _fsync(target.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading the header --------------------------------------------------------------------------------------------
def read_metadata(path: str | os.PathLike[str]) -> CheckpointMetadata:
    """Read a checkpoint's header (no tensor data) and check that :func:`save` wrote it."""
    file = Path(path)
    with file.open("rb") as fh:
        return _read_metadata(file, fh)


def _read_metadata(file: Path, fh: io.BufferedReader) -> CheckpointMetadata:
    header = _read_header(file, fh)
    raw = header.pop("__metadata__", None) or {}
    if _ARCH not in raw:
        raise CheckpointError(
            f"{file}: this safetensors file has no Edifice metadata (no {_ARCH!r} entry), so it was not written by "
            "edifice.save. For plain weights, build the model with edifice.build(...) and call "
            "model.load_state_dict(safetensors.torch.load_file(path))."
        )
    version = _int_entry(file, raw, _SCHEMA)
    if version < 1:
        raise CheckpointError(f"{file}: metadata entry {_SCHEMA!r} holds {version}, which no Edifice wrote")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: written in checkpoint format {version} by a newer Edifice; this edifice-core reads format "
            f"{FORMAT_VERSION} and older. Upgrade edifice-core to load it."
        )
    if version >= _CHECKSUM_SINCE and _CHECKSUM not in raw:
        raise CheckpointError(f"{file}: format {version} carries a checksum, but the {_CHECKSUM!r} entry is missing")
    config = _json_entry(file, raw, _CONFIG, dict)
    return CheckpointMetadata(
        path=file,
        arch=raw[_ARCH],
        config=config,
        schema_version=version,
        config_schema_version=_int_entry(file, raw, _CONFIG_SCHEMA),
        versions=_json_entry(file, raw, _VERSIONS, dict),
        tied=tuple(tuple(group) for group in _json_entry(file, raw, _TIED, list)),
        buffers=_json_entry(file, raw, _BUFFERS, dict),
        tensors={
            key: TensorEntry(_ST_DTYPES.get(entry["dtype"], str(entry["dtype"]).lower()), tuple(entry["shape"]))
            for key, entry in header.items()
        },
        extra={key: value for key, value in raw.items() if key != "format" and not key.startswith(_RESERVED_PREFIX)},
        checksum=raw.get(_CHECKSUM),
        raw=dict(raw),
        offsets={key: (entry["data_offsets"][0], entry["data_offsets"][1]) for key, entry in header.items()},
    )


def _read_header(file: Path, fh: io.BufferedReader) -> dict[str, Any]:
    """Parse the safetensors header: an 8-byte little-endian length, then that many bytes of JSON."""
    not_safetensors = CheckpointError(
        f"{file}: not a safetensors file. Edifice checkpoints are safetensors files written by edifice.save; "
        "pickled checkpoints (torch.save) are never loaded, because unpickling can run arbitrary code."
    )
    fh.seek(0)
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise not_safetensors
    (length,) = struct.unpack("<Q", prefix)
    size = os.fstat(fh.fileno()).st_size
    if length > min(_MAX_HEADER_BYTES, size - 8):
        raise not_safetensors
    try:
        header = json.loads(fh.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise not_safetensors from None
    if not isinstance(header, dict):
        raise not_safetensors
    _check_extent(file, header, size - 8 - length)
    return header


def _check_extent(file: Path, header: Mapping[str, Any], data_bytes: int) -> None:
    """Require the tensors' byte ranges to be well-formed and to cover the data section exactly (not truncated)."""
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not _well_formed(entry):
            raise CheckpointError(
                f"{file}: the header entry of tensor {key!r} is malformed (it needs a dtype, a shape and data_offsets)"
            )
        end = max(end, entry["data_offsets"][1])
    if end != data_bytes:
        state = "truncated" if end > data_bytes else "longer than its header says"
        raise CheckpointError(
            f"{file}: the file is {state}: its header places {end} bytes of tensor data, the file holds {data_bytes}. "
            "It was damaged after it was written (edifice.save writes atomically); save it again."
        )


def _well_formed(entry: Any) -> bool:
    """Whether a header entry has a dtype string, a shape of sizes and two byte offsets."""
    if not isinstance(entry, dict):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    return (
        isinstance(entry.get("dtype"), str)
        and isinstance(shape, list)
        and all(isinstance(n, int) and n >= 0 for n in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
    )


def _int_entry(file: Path, raw: Mapping[str, str], key: str) -> int:
    try:
        return int(raw[key])
    except (KeyError, ValueError):
        raise CheckpointError(f"{file}: metadata entry {key!r} is missing or not an integer") from None


def _json_entry(file: Path, raw: Mapping[str, str], key: str, kind: type) -> Any:
    try:
        value = json.loads(raw[key])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{file}: metadata entry {key!r} is missing or not valid JSON") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{file}: metadata entry {key!r} should hold a JSON {kind.__name__}")
    return value


# -- load ------------------------------------------------------------------------------------------------------------
def load(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    strict: bool = True,
) -> nn.Module:
    """Rebuild the model saved at ``path`` in eval mode on ``device`` (default CPU), floating tensors cast to ``dtype``.

    The model comes back in eval mode (as ``transformers``' ``from_pretrained`` does); call ``model.train()`` to
    fine-tune it. With ``strict=False`` missing and unexpected tensors are tolerated (missing ones keep their fresh
    initialisation); mis-shaped tensors are always an error. A damaged file (truncated, or any bit changed where the
    file carries a checksum) raises :class:`CheckpointError`.
    """
    target = torch.device(device) if device is not None else torch.device("cpu")
    cast = to_dtype(dtype) if dtype is not None else None
    if cast is not None and not cast.is_floating_point:
        raise ValueError(f"load: dtype converts floating tensors and must be a floating dtype, got {dtype_name(cast)}")
    file = Path(path)
    # One open file for the header and the tensors: a concurrent save renaming a new file over `path` in between
    # cannot pair one file's header with another's data. Integrity first: a damaged config must not be built.
    with file.open("rb") as fh:
        meta = _read_metadata(file, fh)
        stored = _read_verified(meta, fh)
    config = _config_from(meta)

    model = build(config, device="meta")
    report = _Report.compare(meta, {key: tuple(t.shape) for key, t in model.state_dict().items()})
    if report.misshaped or (strict and (report.missing or report.unexpected)):
        raise CheckpointError(report.describe(meta, strict))
    owners = [module for module, _ in _non_persistent_slots(model).values()]
    on_meta = not report.missing and all(callable(getattr(m, _INIT_HOOK, None)) for m in owners)
    if not on_meta:
        # Some module cannot recompute its non-persistent buffers in place, or a tensor is missing from the file:
        # let the constructor compute them on the target device.
        model = build(config, device=target)

    ties = _shared_slots(model)
    model.load_state_dict(_place(stored, report.present, target, cast), strict=False, assign=True)
    _retie(ties)
    _flatten_rnn_weights(model)
    slots = _non_persistent_slots(model)
    if on_meta:
        _init_non_persistent(slots, target)
    _cast_non_persistent(slots, meta.buffers, cast)
    return model.eval()


def _config_from(meta: CheckpointMetadata) -> ArchConfig:
    """The checkpoint's config, migrated to the installed schema where the config class allows it."""
    try:
        cls = config_class(meta.arch)
    except UnknownArchitecture as exc:
        raise UnknownArchitecture(f"{meta.path}: checkpoint of {meta.arch!r}: {exc}") from None
    data = dict(meta.config)
    current = cls.current_schema_version()
    saved = meta.config_schema_version
    if saved > current:
        raise CheckpointError(
            f"{meta.path}: config schema {saved} of {meta.arch!r} is newer than the installed one ({current}); "
            f"upgrade {get_spec(meta.arch).distribution} to load it"
        )
    if saved < current:
        try:
            data = dict(cls.migrate_config(data, saved))
        except Exception as exc:
            raise CheckpointError(
                f"{meta.path}: migrating the config of {meta.arch!r} from schema {saved} to {current} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        data["schema_version"] = current
    data["arch"] = meta.arch
    try:
        return cls.from_dict(data)
    except ConfigError as exc:
        raise CheckpointError(f"{meta.path}: the stored config does not validate: {exc}") from exc


@dataclasses.dataclass
class _Report:
    """How the checkpoint's tensors match the model's state dict."""

    present: dict[str, str]  # model key -> key stored in the file (differs for tied aliases)
    missing: list[tuple[str, tuple[int, ...]]]
    unexpected: list[tuple[str, tuple[int, ...]]]
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @classmethod
    def compare(cls, meta: CheckpointMetadata, expected: Mapping[str, tuple[int, ...]]) -> _Report:
        """Match the file's tensors (tied aliases expanded) against ``expected`` shapes."""
        stored = {key: key for key in meta.tensors}
        for kept, *aliases in meta.tied:
            if kept in meta.tensors:
                stored.update(dict.fromkeys(aliases, kept))
        report = cls({}, [], [], [])
        for key, shape in expected.items():
            if key not in stored:
                report.missing.append((key, shape))
            elif meta.tensors[stored[key]].shape != shape:
                report.misshaped.append((key, meta.tensors[stored[key]].shape, shape))
            else:
                report.present[key] = stored[key]
        report.unexpected = [(key, meta.tensors[key].shape) for key in meta.tensors if key not in expected]
        return report

    def describe(self, meta: CheckpointMetadata, strict: bool) -> str:
        """One message naming every problem."""
        lines = [f"{meta.path}: the checkpoint does not match {meta.arch!r} as built from its stored config"]
        if self.missing and strict:
            lines.append(f"  missing from the checkpoint ({len(self.missing)}):")
            lines += [f"    {key} {_shape(shape)}" for key, shape in self.missing]
        if self.unexpected and strict:
            lines.append(f"  unexpected in the checkpoint ({len(self.unexpected)}):")
            lines += [f"    {key} {_shape(shape)}" for key, shape in self.unexpected]
        if self.misshaped:
            lines.append(f"  mis-shaped ({len(self.misshaped)}):")
            lines += [
                f"    {key}: {_shape(got)} in the checkpoint, {_shape(want)} in the model"
                for key, got, want in self.misshaped
            ]
        if strict and not self.misshaped:
            lines.append("Pass strict=False to load the tensors that match and keep the others freshly initialised.")
        return "\n".join(lines)


def _read_verified(meta: CheckpointMetadata, fh: io.BufferedReader) -> dict[str, torch.Tensor]:
    """Every tensor of the open file, on the CPU, after checking the file's checksum (where it carries one)."""
    start = 8 + int.from_bytes(_peek(fh, 0, 8), "little")
    tensors = {key: _read_tensor(meta, fh, start, key) for key in sorted(meta.tensors)}
    if meta.checksum is not None and checksum(meta.raw, tensors) != meta.checksum:
        raise CheckpointError(
            f"{meta.path}: the checksum does not match: the file's bytes changed after edifice.save wrote it "
            "(a damaged disk or copy); save it again"
        )
    return tensors


def _peek(fh: io.BufferedReader, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def _read_tensor(meta: CheckpointMetadata, fh: io.BufferedReader, start: int, key: str) -> torch.Tensor:
    """One tensor from its byte range (safetensors stores little-endian, as every platform PyTorch runs on)."""
    entry = meta.tensors[key]
    dtype = getattr(torch, entry.dtype, None)
    begin, end = meta.offsets[key]
    numel = math.prod(entry.shape)
    if not isinstance(dtype, torch.dtype) or begin > end or end - begin != numel * dtype.itemsize:
        raise CheckpointError(
            f"{meta.path}: the header entry of tensor {key!r} ({entry.dtype} {_shape(entry.shape)} in bytes "
            f"[{begin}, {end})) is inconsistent; the file is damaged"
        )
    if numel == 0:
        return torch.empty(entry.shape, dtype=dtype)
    fh.seek(start + begin)
    data = bytearray(end - begin)
    if fh.readinto(data) != len(data):
        raise CheckpointError(f"{meta.path}: the tensor data of {key!r} is cut short; the file is truncated")
    return torch.frombuffer(data, dtype=dtype).reshape(entry.shape)


def _place(
    stored: Mapping[str, torch.Tensor], present: Mapping[str, str], device: torch.device, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """The model's tensors on ``device`` (floating ones cast to ``dtype``); tied aliases get the same tensor object."""
    moved: dict[str, torch.Tensor] = {}
    for key in set(present.values()):
        tensor = stored[key]
        moved[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
    return {key: moved[key_in_file] for key, key_in_file in present.items()}


_Slot = tuple[nn.Module, str, str]  # (module, "_parameters" or "_buffers", attribute name)


def _shared_slots(model: nn.Module) -> list[list[_Slot]]:
    """Groups of module attributes holding one tensor object (tied weights), as the constructor made them."""
    by_tensor: dict[int, list[_Slot]] = defaultdict(list)
    for module in model.modules():
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(module, kind).items():
                if tensor is not None:
                    by_tensor[id(tensor)].append((module, kind, name))
    return [slots for slots in by_tensor.values() if len(slots) > 1]


def _retie(groups: list[list[_Slot]]) -> None:
    """Point every attribute of a tied group at the first one's object (assign=True wrapped each separately)."""
    for (module, kind, name), *others in groups:
        shared = getattr(module, kind)[name]
        for other, other_kind, other_name in others:
            getattr(other, other_kind)[other_name] = shared


def _flatten_rnn_weights(model: nn.Module) -> None:
    """Pack every ``nn.LSTM``/``nn.GRU``'s assigned weights back into one cuDNN buffer (a no-op off CUDA).

    ``assign=True`` gives each weight its own storage; cuDNN would then warn and copy them all at every call.
    """
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, (module, attr) in _non_persistent_slots(model).items():
        buffer = module._buffers[attr]
        if buffer is not None:
            out[name] = buffer
    return out


def _non_persistent_slots(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Non-persistent buffers by full name, with the module and attribute holding each."""
    slots: dict[str, tuple[nn.Module, str]] = {}
    for prefix, module in model.named_modules():
        for attr in sorted(module._non_persistent_buffers_set):
            if module._buffers.get(attr) is not None:
                slots[f"{prefix}.{attr}" if prefix else attr] = (module, attr)
    return slots


def _init_non_persistent(slots: Mapping[str, tuple[nn.Module, str]], device: torch.device) -> None:
    """Allocate the meta-device buffers on ``device``, then let each owning module fill its own."""
    owners: dict[int, nn.Module] = {}
    for module, attr in slots.values():
        buffer = module._buffers[attr]
        assert buffer is not None  # _non_persistent_slots keeps only registered tensors
        module._buffers[attr] = torch.empty_like(buffer, device=device)
        owners[id(module)] = module
    for module in owners.values():
        hook: Callable[[], None] = getattr(module, _INIT_HOOK)
        hook()


def _cast_non_persistent(
    slots: Mapping[str, tuple[nn.Module, str]], saved: Mapping[str, str], dtype: torch.dtype | None
) -> None:
    """Give floating non-persistent buffers ``dtype`` if given, else the dtype they had when saved."""
    for name, (module, attr) in slots.items():
        buffer = module._buffers[attr]
        if buffer is None or not buffer.is_floating_point():
            continue
        want = dtype if dtype is not None else _torch_dtype(saved.get(name))
        if want is not None and buffer.dtype != want:
            module._buffers[attr] = buffer.to(want)


def _torch_dtype(name: str | None) -> torch.dtype | None:
    value = getattr(torch, name, None) if name else None
    return value if isinstance(value, torch.dtype) else None


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
