"""Registry API: build, config, listing, info, unknown names, requirements and plugin bookkeeping."""

from __future__ import annotations

import dataclasses
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import edifice
from edifice import ArchConfig, ArchSpec, ConfigError, MissingDependency, Paper, TensorSpec, UnknownArchitecture, field
from edifice.catalogue import BLOCK_PROVIDERS
from edifice.errors import InputError, PluginError
from edifice.plugins import PluginWarning, get_registry, load_object
from edifice.registry import missing_requirements
from edifice.testing import registered

MODULE = "edifice_core_registry_toy"


@dataclasses.dataclass(kw_only=True)
class ToyConfig(ArchConfig):
    arch: str = field("toy_mlp", "Registry name.")
    d_model: int = field(8, "Width.")
    d_in: int = field(4, "Input features.")
    mode: str = field("plain", "Variant, fixed per registry name.")
    output: str = field("all", "'all' keeps T, 'last' pools.")

    aliases: ClassVar = {"hidden_size": "d_model"}

    def validate(self) -> None:
        self.check_positive("d_model", "d_in")
        self.check_choice("output", ("all", "last"))


class ToyModel(edifice.Model):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(config.d_in, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x=x)
        y = self.proj(x)
        return y[:, -1] if self.config.output == "last" else y


def _spec(name: str, **kw: Any) -> ArchSpec:
    base: dict[str, Any] = {
        "name": name,
        "family": "toys",
        "distribution": "edifice-core-tests",
        "summary": "A linear map used to test the registry.",
        "paper": Paper("A Toy", "Nobody", 2026, arxiv="0000.00000"),
        "config": f"{MODULE}:ToyConfig",
        "model": f"{MODULE}:ToyModel",
        "inputs": {"x": TensorSpec(("B", "T", "d_in"))},
        "outputs": {"y": TensorSpec(("B", "T if output == 'all' else None", "d_model"))},
        "tiny": {"d_model": 4},
        "verification": "property:linear",
    }
    base.update(kw)
    return ArchSpec(**base)


class ToyPlugin:
    @staticmethod
    @edifice.hookimpl
    def register_architectures(register: Callable[..., None]) -> None:
        register(_spec("toy_mlp", causal=True))
        register(_spec("toy_fixed", defaults={"mode": "fixed"}, fixed=("mode",), alias_of="toy_mlp"))
        register(_spec("toy_needs_block", requires_blocks=("graph_readout",)))
        register(_spec("toy_needs_arch", requires_archs=("gat",)))
        register(_spec("toy_needs_unknown", requires_blocks=("nonexistent",), requires_archs=("not_in_catalogue",)))

    @staticmethod
    @edifice.hookimpl
    def register_blocks(register: Callable[..., None]) -> None:
        register("toy_block", f"{MODULE}:ToyModel", "A toy block.")

    @staticmethod
    @edifice.hookimpl
    def register_converters(register: Callable[..., None]) -> None:
        register(edifice.Converter("toy.Linear", "toy_mlp", f"{MODULE}:from_linear", "nn.Linear -> toy_mlp"))


def from_linear(linear: nn.Linear) -> nn.Module:
    model = edifice.build("toy_mlp", d_in=linear.in_features, d_model=linear.out_features)
    model.proj.load_state_dict(linear.state_dict())
    return model


@pytest.fixture
def toy() -> Iterator[None]:
    module = types.ModuleType(MODULE)
    module.ToyConfig = ToyConfig  # type: ignore[attr-defined]
    module.ToyModel = ToyModel  # type: ignore[attr-defined]
    module.from_linear = from_linear  # type: ignore[attr-defined]
    sys.modules[MODULE] = module
    registry = get_registry()
    registry.register_plugin(ToyPlugin(), "toy-core-tests")
    yield
    registry.unregister_plugin("toy-core-tests")
    del sys.modules[MODULE]


def test_build_and_config(toy: None) -> None:
    model = edifice.build("toy_mlp", d_model=6)
    assert isinstance(model, ToyModel) and model.arch == "toy_mlp"
    assert model.proj.out_features == 6
    assert edifice.config("toy_mlp", hidden_size=5).d_model == 5
    assert edifice.build("toy_mlp", dtype="float64").proj.weight.dtype == torch.float64
    meta = edifice.build("toy_mlp", device="meta")
    assert meta.proj.weight.device.type == "meta"
    from_cfg = edifice.build(edifice.config("toy_mlp", d_model=3), d_in=2)
    assert (from_cfg.proj.in_features, from_cfg.proj.out_features) == (2, 3)
    assert "arch='toy_mlp'" in repr(model)


def test_model_requires_its_config_class(toy: None) -> None:
    with pytest.raises(TypeError, match="expects a ToyConfig"):
        ToyModel(ArchConfig())  # type: ignore[arg-type]


def test_config_errors(toy: None) -> None:
    with pytest.raises(ConfigError, match=r"toy_mlp: unknown option 'd_modle'.*Did you mean 'd_model'"):
        edifice.config("toy_mlp", d_modle=3)
    with pytest.raises(ConfigError, match="field 'mode' is fixed to 'fixed'"):
        edifice.config("toy_fixed", mode="plain")
    with pytest.raises(ConfigError, match="field 'arch' is fixed"):
        edifice.config("toy_mlp", arch="other")
    assert edifice.config("toy_fixed").mode == "fixed"
    with pytest.raises(ConfigError, match="field 'arch' is empty"):
        edifice.build(ToyConfig(arch=""))


def test_unknown_architecture_hints(toy: None) -> None:
    with pytest.raises(UnknownArchitecture, match="Did you mean 'toy_mlp'"):
        edifice.build("toy_mpl")
    with pytest.raises(UnknownArchitecture, match=r"'gat' \(.*\): it is planned for edifice-graph, which is not"):
        edifice.config("gat")  # a catalogue entry of a distribution the meta package has no extra for
    with pytest.raises(UnknownArchitecture, match=r"^unknown architecture 'Toy_Fixed'\. Did you mean 'toy_fixed'"):
        edifice.build("Toy_Fixed")  # the same name but for case comes first
    with pytest.raises(KeyError):
        edifice.get_spec("zzzz_nothing_like_it")
    with pytest.raises(TypeError, match="must be a str"):
        edifice.get_spec(3)  # type: ignore[arg-type]
    assert str(UnknownArchitecture()) == ""


def test_requirements(toy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BLOCK_PROVIDERS, "graph_readout", "edifice-graph")  # a provider that is not released
    with pytest.raises(MissingDependency, match=r"block 'graph_readout'.*planned for edifice-graph, which is not rel"):
        edifice.build("toy_needs_block")
    with pytest.raises(MissingDependency, match=r"architecture 'gat'.*planned for edifice-graph"):
        edifice.build("toy_needs_arch")
    message = missing_requirements("toy_needs_unknown")
    assert message is not None and "nonexistent" in message and "Install" not in message
    assert missing_requirements("toy_mlp") is None


def test_listing(toy: None) -> None:
    names = edifice.list_architectures(family="toys")
    assert names == sorted(names) and "toy_mlp" in names
    assert edifice.list_architectures(pattern="toy_needs_*") == [
        "toy_needs_arch",
        "toy_needs_block",
        "toy_needs_unknown",
    ]
    assert edifice.list_architectures(family="toys", causal=True) == ["toy_mlp"]
    assert "toys" in edifice.families()
    with pytest.raises(ValueError, match="unknown flag 'casual'"):
        edifice.list_architectures(casual=True)


def test_info(toy: None) -> None:
    info = edifice.info("toy_fixed")
    fields = {f.name: f for f in info.fields}
    assert fields["mode"].default == "fixed" and fields["d_model"].doc == "Width."
    assert fields["d_model"].type == "int"
    assert info.plugin == "toy-core-tests"
    data = info.to_dict()
    assert data["spec"]["name"] == "toy_fixed" and data["spec"]["inputs"]["x"]["shape"] == ["B", "T", "d_in"]


def test_converters(toy: None) -> None:
    assert "toy.Linear" in edifice.converters()
    linear = nn.Linear(3, 2)
    model = edifice.convert("toy.Linear", linear)
    x = torch.randn(1, 5, 3)
    torch.testing.assert_close(model(x), linear(x))
    with pytest.raises(UnknownArchitecture, match="unknown converter"):
        edifice.convert("nope", linear)


def test_model_inputs_are_validated(toy: None) -> None:
    model = edifice.build("toy_mlp")
    with pytest.raises(InputError, match=r"^toy_mlp: input 'x' expected \[B, T, 4\] \(d_in=4\), got \[2, 3, 5\]$"):
        model(torch.randn(2, 3, 5))
    inputs = model.example_inputs(batch_size=3, T=5)
    assert model(**inputs).shape == (3, 5, 8)
    assert edifice.example_inputs("toy_mlp", 2)["x"].shape == (2, 8, 4)
    assert edifice.example_inputs(model, 1)["x"].shape == (1, 8, 4)


def test_reset_parameters_and_checkpointing_flag(toy: None) -> None:
    model = edifice.build("toy_mlp")
    before = model.proj.weight.clone()
    model.reset_parameters()
    assert not torch.equal(before, model.proj.weight)
    model.set_grad_checkpointing()
    assert model.grad_checkpointing


def test_duplicate_and_invalid_registrations(toy: None) -> None:
    registry = get_registry()

    class Duplicate:
        @staticmethod
        @edifice.hookimpl
        def register_architectures(register: Callable[..., None]) -> None:
            register(_spec("toy_mlp"))

    with pytest.warns(PluginWarning, match="'toy-core-tests' keeps it \\(already registered"):
        record = registry.register_plugin(Duplicate(), "dup")
    # Only the clashing item is skipped: the plugin itself loads, and the record says what it lost and why.
    assert (record.status, record.architectures) == ("loaded", [])
    assert "replace=True" in record.conflicts[0] and "'dup'" in record.conflicts[0]
    assert registry.owner("architectures", "toy_mlp") == "toy-core-tests"

    class Replacing:
        @staticmethod
        @edifice.hookimpl
        def register_architectures(register: Callable[..., None]) -> None:
            register(_spec("toy_mlp", summary="replaced"), replace=True)

    registry.register_plugin(Replacing(), "replacing")
    assert edifice.get_spec("toy_mlp").summary == "replaced"
    registry.unregister_plugin("replacing")
    registry.unregister_plugin("dup")


def test_failing_plugin_rolls_back(toy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = get_registry()

    class HalfBroken:
        @staticmethod
        @edifice.hookimpl
        def register_architectures(register: Callable[..., None]) -> None:
            register(_spec("toy_half"))
            register("not a spec")

    with pytest.warns(PluginWarning, match="register expects a ArchSpec"):
        registry.register_plugin(HalfBroken(), "half")
    assert "toy_half" not in edifice.list_architectures()
    assert any(r.name == "half" and r.status == "failed" for r in edifice.plugins())
    registry.unregister_plugin("half")

    monkeypatch.setenv("EDIFICE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="failed to load"):
        registry.register_plugin(HalfBroken(), "half-strict")
    registry.unregister_plugin("half-strict")


def test_plugin_registering_twice_and_bad_block(toy: None) -> None:
    registry = get_registry()

    class Twice:
        @staticmethod
        @edifice.hookimpl
        def register_blocks(register: Callable[..., None]) -> None:
            register("b1", "x.y:Z")
            register("b1", "x.y:Z")

    class BadArgs:
        @staticmethod
        @edifice.hookimpl
        def register_converters(register: Callable[..., None]) -> None:
            register(edifice.Converter("c", "toy_mlp", "a.b:c"), "extra")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert registry.register_plugin(Twice(), "twice").status == "failed"
        assert registry.register_plugin(BadArgs(), "badargs").status == "failed"
    assert any("twice" in str(w.message) for w in caught)
    assert any("takes one Converter" in str(w.message) for w in caught)
    with pytest.raises(PluginError, match="already registered"):
        registry.register_plugin(ToyPlugin(), "toy-core-tests")
    registry.unregister_plugin("twice")
    registry.unregister_plugin("badargs")
    registry.unregister_plugin("never-registered")


def test_plugin_commands(toy: None) -> None:
    registry = get_registry()

    class Commands:
        @staticmethod
        @edifice.hookimpl
        def register_commands(cli: Any) -> None:
            cli.add_command("hello", help="Say hello.", configure=lambda p: None, run=lambda a: 0)

    class BrokenCommands:
        @staticmethod
        @edifice.hookimpl
        def register_commands(cli: Any) -> None:
            raise RuntimeError("boom")

    registry.register_plugin(Commands(), "cmds")
    registry.register_plugin(BrokenCommands(), "broken-cmds")
    with pytest.warns(PluginWarning, match="boom"):
        commands = registry.commands()
    assert [c["name"] for c in commands if c["distribution"] is None] == ["hello"]  # arena's own come from its wheel
    assert {c["name"]: c["distribution"] for c in commands}.get("arena") in (None, "edifice-arena")
    registry.unregister_plugin("cmds")
    registry.unregister_plugin("broken-cmds")


def test_records_and_load_object() -> None:
    records = edifice.plugins()
    assert all(r.to_dict()["name"] == r.name for r in records)
    assert load_object("edifice.errors:ConfigError") is ConfigError
    assert load_object("edifice.spec:ArchSpec.to_dict") is ArchSpec.to_dict


def test_lazy_attributes() -> None:
    assert edifice.Model.__name__ == "Model"
    assert "save" in dir(edifice)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        edifice.nope  # noqa: B018


def test_collect_specs_reads_every_module_in_order(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from edifice.plugins import collect_specs

    package = tmp_path / "family_cfgs_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "b_arch.py").write_text("SPECS = ['b1', 'b2']\nBLOCKS = ['blk']\n")
    (package / "a_arch.py").write_text("SPECS = ['a']\n")
    (package / "_private.py").write_text("SPECS = ['hidden']\n")
    (package / "no_specs.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert collect_specs("family_cfgs_pkg") == ["a", "b1", "b2"]
    assert collect_specs("family_cfgs_pkg", "BLOCKS") == ["blk"]


# -- name clashes between plugins ------------------------------------------------------------------------------------
class _Claims:
    """A plugin registering ``toy_claimed`` (with ``replace``) under a distribution given at registration."""

    def __init__(self, summary: str, *, replace: bool = False) -> None:
        self.summary, self.replace = summary, replace

    @edifice.hookimpl
    def register_architectures(self, register: Callable[..., None]) -> None:
        register(_spec("toy_claimed", summary=self.summary), replace=self.replace)
        register(_spec(f"toy_only_{self.summary}"))


_FIRST_PARTY, _THIRD_PARTY = "edifice-ssm", "edifice-foo"  # a catalogue distribution, and one of nobody's


@pytest.mark.parametrize("first_party_loads_first", [True, False])
def test_a_clash_skips_only_the_item_and_the_first_party_keeps_its_name(
    toy: None, first_party_loads_first: bool
) -> None:
    registry = get_registry()
    order = [("ours", _FIRST_PARTY), ("theirs", _THIRD_PARTY)]
    if not first_party_loads_first:
        order.reverse()
    try:
        with pytest.warns(PluginWarning, match=r"'toy_claimed' is registered by both .*'ours'") as caught:
            records = {name: registry.register_plugin(_Claims(name), name, distribution=dist) for name, dist in order}
        assert edifice.get_spec("toy_claimed").summary == "ours"  # whatever the order
        assert registry.owner("architectures", "toy_claimed") == "ours"
        # Each plugin keeps everything else it registered; the loser's record says what it lost, naming both.
        assert {r.status for r in records.values()} == {"loaded"}
        assert sorted(records["ours"].architectures) == ["toy_claimed", "toy_only_ours"]
        assert records["theirs"].architectures == ["toy_only_theirs"]
        assert "toy_only_theirs" in edifice.list_architectures()
        (conflict,) = records["theirs"].conflicts
        assert f"'theirs' ({_THIRD_PARTY})" in conflict and f"'ours' ({_FIRST_PARTY})" in conflict
        assert not records["ours"].conflicts
        assert len([w for w in caught if "'toy_claimed'" in str(w.message)]) == 1
    finally:
        registry.unregister_plugin("ours")
        registry.unregister_plugin("theirs")


def test_between_third_parties_the_first_loaded_keeps_it_and_replace_overrides(toy: None) -> None:
    registry = get_registry()
    try:
        registry.register_plugin(_Claims("first"), "first", distribution=_THIRD_PARTY)
        with pytest.warns(PluginWarning, match="'first' keeps it \\(already registered"):
            registry.register_plugin(_Claims("second"), "second", distribution="edifice-bar")
        assert edifice.get_spec("toy_claimed").summary == "first"
        # replace=True is the explicit override: it wins without a warning, even over a first-party name ...
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            registry.register_plugin(_Claims("override", replace=True), "override", distribution=_THIRD_PARTY)
            assert edifice.get_spec("toy_claimed").summary == "override"
            # ... and keeps it against a first-party plugin that loads after it.
            late = registry.register_plugin(_Claims("late"), "late", distribution=_FIRST_PARTY)
        assert edifice.get_spec("toy_claimed").summary == "override"
        assert "registered it with replace=True" in late.conflicts[0]
        assert "toy_claimed" not in registry.records["first"].architectures  # dropped from the displaced record
    finally:
        for name in ("first", "second", "override", "late"):
            registry.unregister_plugin(name)


def test_a_clash_is_fatal_in_strict_mode(toy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDIFICE_STRICT_PLUGINS", "1")
    registry = get_registry()
    try:
        registry.register_plugin(_Claims("first"), "first", distribution=_THIRD_PARTY)
        with pytest.raises(PluginError, match="'toy_claimed' is registered by both"):
            registry.register_plugin(_Claims("second"), "second", distribution=_THIRD_PARTY)
        assert "toy_only_second" not in edifice.list_architectures()
    finally:
        registry.unregister_plugin("first")
        registry.unregister_plugin("second")


# -- hook names, broken paths ----------------------------------------------------------------------------------------
class _Misspelt:
    @edifice.hookimpl
    def register_architecture(self, register: Callable[..., None]) -> None:
        register(_spec("toy_misspelt"))

    @edifice.hookimpl(optionalhook=True)
    def register_tasks(self, register: Callable[..., None]) -> None:
        """An optional hook of a newer core: accepted without a spec."""


def test_an_unknown_hook_name_fails_the_plugin_and_is_named() -> None:
    registry = get_registry()
    with pytest.warns(PluginWarning, match=r"unknown hook register_architecture\. Did you mean 'register_architect"):
        record = registry.register_plugin(_Misspelt(), "misspelt")
    try:
        assert record.status == "failed"
        assert "register_tasks" not in (record.error or "")  # optionalhook=True is accepted
        assert "toy_misspelt" not in edifice.list_architectures()
    finally:
        registry.unregister_plugin("misspelt")


@pytest.mark.parametrize(
    ("kind", "path", "call"),
    [
        ("config", "edifice_no_such_module.configs:Cfg", edifice.info),
        ("model", f"{MODULE}:NoSuchModel", edifice.build),
    ],
)
def test_a_broken_config_or_model_path_names_the_plugin_and_the_path(
    toy: None, kind: str, path: str, call: Callable[[str], Any]
) -> None:
    expected = rf"^toy_broken_path: plugin 'broken-paths' .* {kind} path '{path}'"
    spec = _spec("toy_broken_path", **{kind: path})
    with registered(spec, name="broken-paths"), pytest.raises(PluginError, match=expected):
        call("toy_broken_path")


def test_input_ids_without_a_vocabulary_says_which_inputs_this_config_takes() -> None:
    spec = _spec(
        "toy_tokens",
        inputs={
            "x": TensorSpec(("B", "T", "d_in"), when="mode == 'plain'"),
            "input_ids": TensorSpec(("B", "T"), "int64", "int[0, 8)", when="mode == 'tokens'"),
        },
    )
    model = ToyModel(ToyConfig(arch="toy_tokens"))
    with registered(spec), pytest.raises(InputError) as caught:
        model.check_inputs(input_ids=torch.zeros(2, 3, dtype=torch.long))
    assert str(caught.value) == (
        "toy_tokens: input 'input_ids' is taken only when mode == 'tokens', and this model was built with "
        "mode='plain'; it takes x [B, T, 4]"
    )


def test_a_released_distribution_is_missing_or_failed_not_planned(toy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import edifice.registry

    monkeypatch.setattr(edifice.registry, "RELEASED", edifice.registry.RELEASED | {"edifice-graph"})
    with pytest.raises(UnknownArchitecture, match=r'part of edifice-graph, which is not installed: pip install "'):
        edifice.build("gat")
    registry = get_registry()
    with pytest.warns(PluginWarning):
        registry.register_plugin(_Misspelt(), "graph-broken", distribution="edifice_graph", version="0.1.0")
    try:
        with pytest.raises(UnknownArchitecture, match=r"edifice-graph, whose plugin failed to load: .*unknown hook"):
            edifice.build("gat")
    finally:
        registry.unregister_plugin("graph-broken")


def test_first_party_distributions_are_this_projects_by_normalised_name() -> None:
    from edifice.catalogue import is_first_party

    assert is_first_party("edifice-ssm") and is_first_party("Edifice_SSM") and is_first_party("edifice-arena")
    assert not is_first_party("edifice-foo") and not is_first_party(None)
