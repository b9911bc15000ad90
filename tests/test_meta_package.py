"""The `edifice` meta distribution: a wheel of metadata only, whose extras cover every published family."""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

from edifice.catalogue import RELEASED, catalogue

ROOT = Path(__file__).resolve().parent.parent


def _members() -> dict[str, dict]:
    return {p.parent.name: tomllib.loads(p.read_text()) for p in sorted(ROOT.glob("packages/*/pyproject.toml"))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to build the meta wheel (it is how the workspace is installed)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [uv, "build", "--quiet", "--wheel", "--package", "edifice", "--out-dir", str(out)], cwd=ROOT, check=True
    )
    (path,) = out.glob("edifice-*.whl")
    return path


def test_wheel_holds_only_metadata(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert names and all(".dist-info/" in n for n in names), names


def test_extras_cover_every_family_and_distribution(wheel: Path) -> None:
    members = _members()
    version = members["edifice"]["project"]["version"]
    with zipfile.ZipFile(wheel) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(meta_name).decode())
    extras = set(metadata.get_all("Provides-Extra") or [])
    requires = metadata.get_all("Requires-Dist") or []
    published = {name for name in members if name not in ("edifice", "edifice-core")}
    expected = {"all"} | {d.removeprefix("edifice-") for d in published}
    expected |= {e.family.replace("_", "-") for e in catalogue().values() if e.distribution in published}
    assert expected <= extras, f"missing extras: {sorted(expected - extras)}"
    for dist in published:
        pin = f"{dist}=={version}"
        assert any(r.startswith(pin) and "extra == 'all'" in r for r in requires), f"'all' must pin {pin}"
    # Every member shares one version, and families depend on a compatible core range.
    assert {m["project"]["version"] for m in members.values()} == {version}
    for dist in published:
        deps = members[dist]["project"]["dependencies"]
        assert any(d.startswith("edifice-core>=") and "<" in d for d in deps), f"{dist} must depend on a core range"


def test_core_knows_which_distributions_are_released() -> None:
    # `edifice info NAME` calls an entry of an unreleased distribution "planned" instead of printing an install line
    # for an extra that does not exist: core's list must be the meta package's extras.
    extras = _members()["edifice"]["project"]["optional-dependencies"]
    assert {req.split("==")[0] for reqs in extras.values() for req in reqs} == RELEASED


def test_the_meta_readme_lists_every_extra() -> None:
    readme = (ROOT / "packages" / "edifice" / "README.md").read_text(encoding="utf-8")
    extras = _members()["edifice"]["project"]["optional-dependencies"]
    missing = [extra for extra in extras if f"`{extra}`" not in readme]
    assert not missing, f"packages/edifice/README.md does not list the extras {missing}"
