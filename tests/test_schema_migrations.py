"""Checkpoints saved before a config schema changed load into the new schema and compute what they computed.

Each case builds the tiny model with the values an older schema meant (written out), saves it, rewrites the file's
config as that schema stored it (the new field absent, or ``None`` with its old meaning) and loads it: the config the
migration gives equals the written-out one and the outputs are identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

import edifice
from edifice.io import checksum

#: arch -> (values an old file meant, written out; how that old file stored its config)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "s5": ({"block": "linear", "norm": "layernorm", "norm_position": "post"}, {"block": None}),
    "samba": ({"d_ff": 4 * 16}, {"d_ff": "null"}),
    # Four layers: schema 1's default global layers were (0, 2, 3), schema 2's are (0, 1, 3).
    "hymba": ({"kv_reuse_groups": (), "global_layers": (0, 2, 3)}, {"kv_reuse_groups": None, "global_layers": "null"}),
    "liquid": ({"cfc_backbone_activation": "tanh"}, {"cfc_backbone_activation": None}),
    "titans": ({"output_gate": False}, {"output_gate": None}),
}


def _as_old_file(path: Path, stored: dict[str, Any]) -> None:
    """Rewrite the checkpoint's config as schema 1 stored it: ``None`` drops a field, ``"null"`` stores None."""
    with safetensors.safe_open(str(path), framework="pt") as fh:
        header = dict(fh.metadata())
    tensors = safetensors.torch.load_file(path)
    config = json.loads(header["edifice.config"])
    for name, value in stored.items():
        if value is None:
            config.pop(name)
        else:
            config[name] = None
    config["schema_version"] = 1
    header["edifice.config"] = json.dumps(config)
    header["edifice.config_schema_version"] = "1"
    header["edifice.checksum"] = checksum(header, tensors)
    safetensors.torch.save_file(tensors, path, metadata=header)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_a_schema_1_checkpoint_loads_with_its_old_meaning(arch: str, tmp_path: Path) -> None:
    meant, stored = CASES[arch]
    spec = edifice.get_spec(arch)
    overrides = {**spec.tiny, **meant}
    if arch == "samba":
        assert spec.tiny["d_model"] == 16, "CASES assumes samba's tiny d_model"
    if arch == "hymba":
        overrides["n_layers"] = 4
    model = edifice.build(arch, **overrides).eval()
    assert model.config.schema_version == 2
    path = tmp_path / f"{arch}.safetensors"
    edifice.save(model, path)
    _as_old_file(path, stored)

    loaded = edifice.load(path)
    assert loaded.config == model.config
    inputs = edifice.example_inputs(model, batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs), model(**inputs), rtol=0, atol=0)
