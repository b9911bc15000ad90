"""The opt-in pytest plugin (exercised through inner pytest sessions) and the registration helpers."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import edifice
from edifice import ArchSpec, PluginError, TensorSpec, hookimpl
from edifice.plugins import get_registry
from edifice.testing import make_plugin, registered

CONFTEST = """
pytest_plugins = ["edifice.testing.pytest_plugin"]

from edifice import ArchSpec, TensorSpec
from edifice.plugins import get_registry
from edifice.testing import make_plugin

# An architecture registered at collection time, whatever else is installed.
SPEC = ArchSpec(
    name="inner_arch", family="toy", distribution="inner", summary="s", paper=None,
    config="inner:Config", model="inner:Model", inputs={}, outputs={"y": TensorSpec(("B",))},
)
get_registry().register_plugin(make_plugin(SPEC), "inner-plugin")
"""


@dataclasses.dataclass
class Outcome:
    """What an inner pytest session returned and printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_pytest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Outcome]]:
    """Run an inner pytest session, in this process, on one test file with the plugin enabled by its conftest."""

    def run(test_code: str, *args: str) -> Outcome:
        (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        (tmp_path / "test_inner.py").write_text(textwrap.dedent(test_code))
        capsys.readouterr()
        code = pytest.main(
            [str(tmp_path), "-p", "no:cacheprovider", "-p", "no:xdist", "--import-mode=importlib", "-q", *args]
        )
        out, err = capsys.readouterr()
        # The inner session imported its conftest and test file under plain names; forget them for the next one.
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
                del sys.modules[name]
        return Outcome(int(code), out, err)

    yield run
    get_registry().unregister_plugin("inner-plugin")


SIGNATURES = """
import pytest
import edifice
from edifice.testing import signature

NAMES = [n for n in edifice.list_architectures() if n not in {SKIP}]

@pytest.mark.parametrize("name", [pytest.param(n, marks=signature(n)) for n in NAMES])
def test_signature(name):
    pass

def test_unmarked():
    pass
"""


def test_require_signatures_fails_collection_naming_the_uncovered(run_pytest: Callable[..., Outcome]) -> None:
    result = run_pytest(SIGNATURES.replace("{SKIP}", "{'inner_arch'}"), "--edifice-require-signatures")
    assert result.returncode == pytest.ExitCode.INTERRUPTED, result.stdout + result.stderr
    assert "ERROR collecting edifice-require-signatures" in result.stdout
    assert "1 registered architecture(s) have no test marked @signature(<name>) in this session: inner_arch." in (
        result.stdout
    )


def test_require_signatures_passes_when_every_architecture_has_one(run_pytest: Callable[..., Outcome]) -> None:
    # Deselecting with -k does not matter: a collected signature test counts.
    result = run_pytest(SIGNATURES.replace("{SKIP}", "set()"), "--edifice-require-signatures", "-k", "unmarked")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr


def test_without_the_option_missing_signatures_are_allowed(run_pytest: Callable[..., Outcome]) -> None:
    # --strict-markers: the plugin registers the `signature` marker itself.
    result = run_pytest(SIGNATURES.replace("{SKIP}", "{'inner_arch'}"), "--strict-markers")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr


def test_fixture_registers_for_one_test_and_the_time_limit_option(run_pytest: Callable[..., Outcome]) -> None:
    code = """
    import edifice
    from edifice import ArchSpec, TensorSpec
    from edifice.testing import timing

    SPEC = ArchSpec(
        name="fixture_arch", family="toy", distribution="inner", summary="s", paper=None,
        config="inner:Config", model="inner:Model", inputs={}, outputs={"y": TensorSpec(("B",))},
    )

    def test_1_registers(edifice_plugin):
        record = edifice_plugin(SPEC, name="fixture-plugin")
        assert record.status == "loaded" and record.architectures == ["fixture_arch"]
        assert "fixture_arch" in edifice.list_architectures()

    def test_2_unregistered_after(edifice_plugin):
        assert "fixture_arch" not in edifice.list_architectures()
        assert "fixture-plugin" not in {r.name for r in edifice.plugins()}

    def test_3_time_limit():
        assert timing.time_limit() == 0.5
        timing.record(timing.Timing("inner_arch", "forward", 0.25))
    """
    result = run_pytest(code, "--edifice-check-time-limit", "0.5")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "edifice: 1 contract checks, 0 s; 0 over the 2 s budget (reported, not failed; hang guard 0.5 s)" in (
        result.stdout
    )
    assert "0.2 s  toy (1 checks)" in result.stdout  # the family's total
    assert "0.25 s  inner_arch-forward" in result.stdout


def test_a_bad_time_limit_option_is_a_usage_error(run_pytest: Callable[..., Outcome]) -> None:
    result = run_pytest("def test_x():\n    pass\n", "--edifice-check-time-limit", "soon")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--edifice-check-time-limit='soon': expected seconds" in result.stderr


def _spec(name: str) -> ArchSpec:
    return ArchSpec(
        name=name,
        family="toy",
        distribution="edifice-core-tests",
        summary="A spec that is never built.",
        paper=None,
        config="edifice_kit_toys:ToyConfig",
        model="edifice_kit_toys:ToyRecurrent",
        inputs={},
        outputs={"y": TensorSpec(("B",))},
    )


def test_registered_adds_and_removes_a_plugin() -> None:
    with registered(_spec("kit_registered"), name="kit-registered") as record:
        assert record.name == "kit-registered"
        assert record.architectures == ["kit_registered"]
        assert "kit_registered" in edifice.list_architectures()
    assert "kit_registered" not in edifice.list_architectures()
    assert "kit-registered" not in {r.name for r in edifice.plugins()}


def test_registered_takes_a_plugin_object_and_names_it() -> None:
    calls: list[str] = []

    @hookimpl
    def register_architectures(register: Any) -> None:
        calls.append("architectures")
        register(_spec("kit_object"))

    plugin = SimpleNamespace(register_architectures=register_architectures, __name__="kit_object_plugin")
    with registered(plugin) as record:
        assert record.name.startswith("test-kit_object_plugin-")
        assert calls == ["architectures"]
    assert "kit_object" not in edifice.list_architectures()


def test_make_plugin_registers_each_kind_and_refuses_other_items() -> None:
    block = edifice.BlockSpec("kit_block", "edifice_kit_toys:ToyRecurrent")
    op = edifice.OpOverride("sdpa", "kit_override", "edifice_kit_toys:ToyRecurrent", device="kit_device")
    converter = edifice.Converter("kit.Converter", "kit_arch", "edifice_kit_toys:toy_spec")
    with registered(_spec("kit_arch"), block, op, converter) as record:
        assert (record.architectures, record.blocks, record.ops, record.converters) == (
            ["kit_arch"],
            ["kit_block"],
            ["sdpa/kit_override"],
            ["kit.Converter"],
        )
        assert record.name.startswith("test-kit_arch-")
    with pytest.raises(
        TypeError, match="make_plugin takes ArchSpec, BlockSpec, OpOverride or Converter items, got str"
    ):
        make_plugin(_spec("kit_a"), "not a spec")  # type: ignore[arg-type]


def test_a_clashing_registration_raises_and_leaves_nothing_behind() -> None:
    with registered(_spec("kit_clash"), name="kit-first"):
        with (
            pytest.warns(UserWarning, match="already registered"),
            pytest.raises(PluginError, match=r"test plugin 'kit-second' failed to register: .*already registered"),
            registered(_spec("kit_clash"), name="kit-second"),
        ):
            pass
        assert "kit-second" not in {r.name for r in edifice.plugins()}
        assert edifice.info("kit_clash").plugin == "kit-first"


MUTATED = """
import torch
import edifice
from edifice.testing import signature

def _attend(mask):
    q = k = v = torch.eye(3).reshape(1, 1, 3, 3)
    return edifice.ops.sdpa(q, k, v, causal=mask)

@signature("inner_arch")
def test_causal_attention_is_causal():
    out = _attend(True)
    torch.testing.assert_close(out[..., 0, :], torch.eye(3)[0].reshape(1, 1, 3))

@signature("inner_arch")
def test_blind_to_the_mask():
    _attend(False)  # passes whatever attention does with masks: a signature test that proves nothing

@signature("inner_arch")
def test_without_attention():
    assert 1 + 1 == 2

def test_unmarked_is_untouched():
    _attend(False)
"""


def test_mutate_option_inverts_signature_verdicts(run_pytest: Callable[..., Outcome]) -> None:
    outcome = run_pytest(MUTATED, "--edifice-mutate", "sdpa")
    assert outcome.returncode == 1, outcome.stdout
    assert "1 failed, 3 passed" in outcome.stdout
    assert "signature test of inner_arch still passes with sdpa mutated" in outcome.stdout
    assert "sdpa: 1 killed, 1 survived, 1 unused" in outcome.stdout


def test_mutate_option_rejects_unknown_ops(run_pytest: Callable[..., Outcome]) -> None:
    outcome = run_pytest(MUTATED, "--edifice-mutate", "nonexistent_op")
    assert outcome.returncode == 4
    assert "unknown op(s) ['nonexistent_op']" in outcome.stderr + outcome.stdout


def test_mutate_all_covers_every_known_op(run_pytest: Callable[..., Outcome]) -> None:
    from edifice.testing.mutate import MUTATIONS

    outcome = run_pytest(MUTATED, "--edifice-mutate", "all")
    for op in MUTATIONS:
        assert f"{op}: " in outcome.stdout


def test_cuda_heavy_holds_a_lock_file_shared_by_the_run(
    cuda_heavy: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import fcntl

    lock_path = tmp_path_factory.getbasetemp().parent / "edifice-cuda-heavy.lock"
    assert lock_path.exists()
    # A second holder (another worker) cannot take it while this test runs.
    with open(lock_path, "a") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
