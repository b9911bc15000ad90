"""Plugin discovery through the `edifice` entry-point group, with the test distributions of tests/plugins/.

``edifice-toy`` registers one architecture as a third party would; ``edifice-broken``'s entry point raises on import;
``edifice-rogue`` registers ``mamba``, which edifice-ssm owns, under an entry-point name that loads first.
The nox `tests` session installs both and sets ``EDIFICE_TEST_PLUGINS=1``; elsewhere these tests skip, unless that
variable is set, in which case a missing test plugin is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from importlib import metadata

import pytest
import torch

import edifice
from edifice.errors import PluginError
from edifice.plugins import PluginWarning, Registry

TOY, BROKEN, ROGUE = "edifice-toy", "edifice-broken", "edifice-rogue"
#: Entry-point names (what plugin records and EDIFICE_LOAD_PLUGINS use).
TOY_EP, BROKEN_EP, ROGUE_EP = "toy", "broken_on_import", "mamba_plus"
BROKEN_MESSAGE = "RuntimeError: edifice-broken fails on import on purpose"


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


_MISSING = [d for d in (TOY, BROKEN, ROGUE) if not _installed(d)]
if _MISSING:
    _WHY = f"{', '.join(_MISSING)} not installed (the nox `tests` session installs tests/plugins/edifice-*)"
    if os.environ.get("EDIFICE_TEST_PLUGINS"):
        pytest.fail(f"{_WHY}, but EDIFICE_TEST_PLUGINS is set", pytrace=False)
    pytest.skip(_WHY, allow_module_level=True)


def _fresh_registry() -> Registry:
    """A registry that discovers the entry points again (the process-wide one loads them once)."""
    return Registry()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDIFICE_")}
    return {**env, **extra}


def test_the_toy_plugin_is_discovered_and_listed() -> None:
    records = {r.name: r for r in edifice.plugins()}
    toy = records[TOY_EP]
    assert (toy.status, toy.distribution, toy.version) == ("loaded", TOY, "0.1.0")
    assert toy.architectures == ["toy_mixer"]
    assert "toy_mixer" in edifice.list_architectures()
    assert "toy_mixer" in edifice.list_architectures(family="toy", causal=True)
    assert "toy" in edifice.families()
    info = edifice.info("toy_mixer")
    assert (info.plugin, info.spec.distribution) == (TOY_EP, TOY)
    assert [f.name for f in info.fields] == ["d_in", "d_model", "d_hidden"]


def test_a_third_party_architecture_builds_and_runs() -> None:
    model = edifice.build("toy_mixer", d_in=4, d_model=6)
    y = model(**edifice.example_inputs(model, 2, T=5))
    assert y.shape == (2, 5, 6)
    assert torch.isfinite(y).all()


def test_a_broken_plugin_is_recorded_warned_about_and_isolated() -> None:
    registry = _fresh_registry()
    with pytest.warns(PluginWarning, match=f"'{BROKEN_EP}' \\({BROKEN}\\) failed to load: {BROKEN_MESSAGE}"):
        registry.ensure_loaded()
    broken = registry.records[BROKEN_EP]
    assert (broken.status, broken.distribution, broken.architectures) == ("failed", BROKEN, [])
    assert broken.error is not None
    assert broken.error.startswith(BROKEN_MESSAGE)
    assert registry.records[TOY_EP].status == "loaded"
    assert "toy_mixer" in registry.items("architectures")
    # The process-wide registry shows it the same way (`edifice plugins` prints this record).
    assert {r.name: r.status for r in edifice.plugins()}[BROKEN_EP] == "failed"


def test_discovery_in_a_fresh_process_reports_every_plugin() -> None:
    code = "import edifice, json; print(json.dumps({r.name: [r.status, r.error] for r in edifice.plugins()}))"
    result = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert records[TOY_EP] == ["loaded", None]
    assert records[BROKEN_EP][0] == "failed"
    assert BROKEN_MESSAGE in records[BROKEN_EP][1]
    assert "PluginWarning" in result.stderr


def test_strict_mode_raises_in_a_subprocess() -> None:
    code = "import edifice; edifice.list_architectures()"
    env = _clean_env(EDIFICE_STRICT_PLUGINS="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    expected = f"{PluginError.__module__}.PluginError: Edifice plugin '{BROKEN_EP}' ({BROKEN}) failed to load"
    assert expected in result.stderr
    assert BROKEN_MESSAGE in result.stderr


@pytest.mark.parametrize("selection", [TOY, TOY_EP, f" {TOY} , not-installed "])
def test_load_plugins_selects_by_distribution_or_entry_point_name(
    monkeypatch: pytest.MonkeyPatch, selection: str
) -> None:
    monkeypatch.setenv("EDIFICE_LOAD_PLUGINS", selection)
    registry = _fresh_registry()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.ensure_loaded()
    assert not [w for w in caught if issubclass(w.category, PluginWarning)]  # the broken one is not even imported
    assert registry.records[TOY_EP].status == "loaded"
    assert (registry.records[BROKEN_EP].status, registry.records[BROKEN_EP].error) == (
        "skipped",
        "not in EDIFICE_LOAD_PLUGINS",
    )
    assert {r.status for name, r in registry.records.items() if name != TOY_EP} == {"skipped"}
    assert list(registry.items("architectures")) == ["toy_mixer"]


def test_an_empty_load_plugins_loads_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDIFICE_LOAD_PLUGINS", "")
    registry = _fresh_registry()
    registry.ensure_loaded()
    assert {r.status for r in registry.records.values()} == {"skipped"}
    assert dict(registry.items("architectures")) == {}


@pytest.mark.skipif(not _installed("edifice-ssm"), reason="the rogue clashes with edifice-ssm, not installed here")
def test_a_third_party_claiming_a_first_party_name_skips_only_that_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # mamba_plus loads before ssm (sorted entry-point names); the first-party family still keeps `mamba`, and neither
    # plugin fails: before, the whole of edifice-ssm (22 architectures) vanished behind one warning.
    monkeypatch.setenv("EDIFICE_LOAD_PLUGINS", f"{ROGUE},edifice-ssm")
    registry = _fresh_registry()
    with pytest.warns(PluginWarning, match=r"'mamba' is registered by both") as caught:
        registry.ensure_loaded()
    ssm, rogue = registry.records["ssm"], registry.records[ROGUE_EP]
    assert (ssm.status, rogue.status) == ("loaded", "loaded")
    assert registry.owner("architectures", "mamba") == "ssm"
    assert registry.items("architectures")["mamba"].distribution == "edifice-ssm"
    assert sorted(ssm.architectures) == edifice.list_architectures(family="ssm")  # every one of them
    assert rogue.architectures == []
    (message,) = [str(w.message) for w in caught if "'mamba'" in str(w.message)]
    assert f"'{ROGUE_EP}' ({ROGUE})" in message and "'ssm' (edifice-ssm)" in message
    assert rogue.conflicts == [message.removeprefix("Edifice plugins: ")]
