"""Training checkpoints on disk: one directory per saved step, written atomically, nothing pickled.

::

    CHECKPOINT_DIR/
      step-00000100/
        model.safetensors     the model, written by edifice.save (edifice.load reads it on its own)
        trainer.safetensors   the optimizer's tensors and every rank's RNG states
        trainer.json          step, config, scheduler, optimizer groups, data position
      step-00000200/ ...
      latest                  the name of the newest complete step directory

A step directory is first written under a temporary name and renamed into place when complete, and ``latest`` is
replaced by a rename too, so a run killed at any moment leaves the previous checkpoint intact and ``latest`` never
names a partial one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

__all__ = ["MODEL_FILE", "latest_checkpoint", "read_checkpoint", "write_checkpoint"]

MODEL_FILE = "model.safetensors"
_TENSORS_FILE = "trainer.safetensors"
_STATE_FILE = "trainer.json"
_LATEST = "latest"
_STEP_DIR = re.compile(r"step-(\d+)")


def _step_dir(step: int) -> str:
    return f"step-{step:08d}"


def write_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    *,
    write_model: Callable[[Path], None],
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write the checkpoint of ``step`` under ``directory`` atomically; return its path.

    ``write_model(path)`` writes the model file (``edifice.save``); ``tensors`` go to a safetensors file and
    ``state`` (JSON-native) to a JSON file. With ``keep_last``, only that many newest step directories are kept.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_dir(step)
    tmp = root / f".{final.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        write_model(tmp / MODEL_FILE)
        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / _TENSORS_FILE)
        (tmp / _STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        for file in tmp.iterdir():
            _fsync(file)
        if final.exists():  # a re-run of the same step: the new one replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomically(root / _LATEST, final.name)
    if keep_last is not None:
        for old in _step_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``directory`` (``None`` if there is none)."""
    root = Path(directory)
    pointer = root / _LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / _STATE_FILE).is_file():
            return named
    found = [d for d in _step_dirs(root) if (d / _STATE_FILE).is_file()]
    return found[-1] if found else None


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The model file, the tensors and the JSON state of the checkpoint directory ``path``."""
    root = Path(path)
    missing = [name for name in (MODEL_FILE, _TENSORS_FILE, _STATE_FILE) if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: not a training checkpoint (missing {', '.join(missing)})")
    tensors = safetensors.torch.load_file(root / _TENSORS_FILE)
    return root / MODEL_FILE, tensors, json.loads((root / _STATE_FILE).read_text())


def _step_dirs(root: Path) -> list[Path]:
    """Complete step directories, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if d.is_dir() and (m := _STEP_DIR.fullmatch(d.name))]
    return [d for _, d in sorted(found)]


def _write_atomically(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(file: Path) -> None:
    # Flush to disk before the rename, so a crash cannot leave a renamed but empty file.
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
