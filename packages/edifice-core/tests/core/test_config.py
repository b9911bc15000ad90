"""ArchConfig: type checking, normalisation, validation helpers, aliases and JSON round-trips."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import pytest

from edifice import ArchConfig, ConfigError, field


@dataclasses.dataclass(kw_only=True)
class ToyConfig(ArchConfig):
    arch: str = field("toy", "Registry name.")
    d_model: int = field(16, "Width.")
    n_heads: int = field(4, "Heads.")
    dropout: float = field(0.0, "Dropout probability.")
    norm: Literal["rmsnorm", "layernorm"] = field("rmsnorm", "Normalisation.")
    vocab_size: int | None = field(None, "Vocabulary size or None.")
    kernel: tuple[int, ...] = field((3, 5), "Kernel sizes.")
    pair: tuple[int, str] = field((1, "a"), "A fixed-length pair.")
    extras: dict[str, float] = field(default_factory=dict, doc="Named extras.")
    bias: bool = field(True, "Use biases.")

    aliases: ClassVar = {"hidden_size": "d_model", "num_heads": "n_heads"}

    def validate(self) -> None:
        self.check_positive("d_model", "n_heads", "vocab_size")
        self.check_divides("n_heads", "d_model")
        self.check_range("dropout", 0.0, 1.0)
        self.check_choice("norm", ("rmsnorm", "layernorm"))


def test_defaults_and_docs() -> None:
    cfg = ToyConfig()
    assert cfg.d_model == 16
    assert ToyConfig.field_docs()["d_model"] == "Width."
    assert "d_model" in ToyConfig.field_names()


def test_int_is_accepted_for_float_and_lists_become_tuples() -> None:
    cfg = ToyConfig(dropout=0, kernel=[1, 2])
    assert isinstance(cfg.dropout, float)
    assert cfg.kernel == (1, 2)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"d_model": "64"}, "field 'd_model' expects int, got str ('64')"),
        ({"d_model": True}, "field 'd_model' expects int, got bool"),
        ({"dropout": "x"}, "field 'dropout' expects float"),
        ({"norm": "batchnorm"}, "field 'norm' expects 'rmsnorm' | 'layernorm'"),
        ({"vocab_size": 1.5}, "expects int | None"),
        ({"kernel": (1, "a")}, "expects tuple[int, ...]"),
        ({"kernel": 3}, "expects tuple[int, ...]"),
        ({"pair": (1, 2)}, "expects tuple[int, str]"),
        ({"pair": (1,)}, "expects tuple[int, str]"),
        ({"extras": [1]}, "expects dict"),
        ({"bias": 1}, "expects bool"),
    ],
)
def test_type_errors_name_the_field(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match="toy: ") as info:
        ToyConfig(**overrides)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"d_model": 0}, "field 'd_model'=0 must be > 0"),
        ({"n_heads": 3}, "field 'n_heads'=3 must divide d_model=16"),
        ({"dropout": 1.5}, "must lie in [0.0, 1.0]"),
        ({"vocab_size": -1}, "field 'vocab_size'=-1 must be > 0"),
    ],
)
def test_validation_errors(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ToyConfig(**overrides)
    assert fragment in str(info.value)


def test_check_choice_suggests_close_match() -> None:
    cfg = ToyConfig()
    object.__setattr__(cfg, "norm", "rmsnrom")
    with pytest.raises(ConfigError, match="Did you mean 'rmsnorm'"):
        cfg.validate()


def test_check_positive_allow_zero() -> None:
    cfg = ToyConfig()
    cfg.check_positive("dropout", allow_zero=True)
    object.__setattr__(cfg, "dropout", -0.1)
    with pytest.raises(ConfigError, match=">= 0"):
        cfg.check_positive("dropout", allow_zero=True)


def test_aliases_and_unknown_options() -> None:
    cfg = ToyConfig.from_overrides(hidden_size=32, num_heads=8)
    assert (cfg.d_model, cfg.n_heads) == (32, 8)
    with pytest.raises(ConfigError, match=r"unknown option 'd_modle'.*Did you mean 'd_model'"):
        ToyConfig.from_overrides(d_modle=3)
    with pytest.raises(ConfigError, match="alias of 'd_model', given twice"):
        ToyConfig.from_overrides(d_model=8, hidden_size=8)


def test_json_round_trip_and_replace() -> None:
    cfg = ToyConfig(kernel=(7,), extras={"a": 1.0}, vocab_size=11)
    again = ToyConfig.from_json(cfg.to_json())
    assert again == cfg
    assert cfg.to_dict()["kernel"] == [7]
    changed = cfg.replace(hidden_size=8, n_heads=2)
    assert changed.d_model == 8 and cfg.d_model == 16
    with pytest.raises(ConfigError, match="n_heads"):
        cfg.replace(n_heads=5)


def test_field_requires_doc() -> None:
    with pytest.raises(TypeError, match="docstring"):
        field(1)


@dataclasses.dataclass(kw_only=True)
class _Versioned(ArchConfig):
    """Schema 2 added ``gate``; schema 3 made ``width=None`` mean 2 * d instead of 4 * d."""

    arch: str = field("versioned", "Registry name.")
    schema_version: int = field(3, "Version of this config's schema.")
    d: int = field(4, "A width.")
    width: int | None = field(None, "None: 2 * d.")
    gate: bool = field(True, "Added by schema 2.")

    schema_changes: ClassVar[Mapping[int, Mapping[str, Any]]] = {
        2: {"gate": False},
        3: {"width": lambda saved: 4 * saved["d"] if saved.get("width") is None else saved["width"]},
    }


def test_migrate_config_applies_each_recorded_schema_change_in_order() -> None:
    assert _Versioned.migrate_config({"d": 3}, 1) == {"d": 3, "gate": False, "width": 12}
    assert _Versioned.migrate_config({"d": 3, "gate": True, "width": 5}, 1) == {"d": 3, "gate": True, "width": 5}
    assert _Versioned.migrate_config({"d": 3}, 2) == {"d": 3, "width": 12}  # schema 2 already had gate
    assert _Versioned.migrate_config({"d": 3}, 3) == {"d": 3}


def test_migrate_config_names_a_version_with_no_record() -> None:
    with pytest.raises(ValueError, match="_Versioned records no migration to schema 1"):
        _Versioned.migrate_config({}, 0)
