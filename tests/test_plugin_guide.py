"""docs/plugins.md gives a whole plugin: tools/plugin_guide.py finds its six files, and they are well formed.

The `docs` nox session goes further: it installs the extracted plugin beside core's wheel and runs its tests.
"""

from __future__ import annotations

import ast
import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("plugin_guide", ROOT / "tools" / "plugin_guide.py")
assert _spec is not None and _spec.loader is not None
plugin_guide = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin_guide)

FILES = plugin_guide.extract(plugin_guide.GUIDE.read_text(encoding="utf-8"))


def test_the_guide_gives_six_files() -> None:
    assert list(FILES) == [
        "pyproject.toml",
        "src/edifice_foo/__init__.py",
        "src/edifice_foo/config.py",
        "src/edifice_foo/model.py",
        "src/edifice_foo/plugin.py",
        "tests/test_foo.py",
    ]


def test_the_pyproject_builds_and_asks_for_the_testing_extra() -> None:
    project = tomllib.loads(FILES["pyproject.toml"])
    assert project["build-system"]["build-backend"] == "hatchling.build"
    assert project["project"]["entry-points"]["edifice"] == {"foo": "edifice_foo.plugin"}
    assert any(r.startswith("edifice-core[testing]") for r in project["project"]["optional-dependencies"]["test"])


@pytest.mark.parametrize("path", [p for p in FILES if p.endswith(".py")])
def test_python_files_parse_and_only_the_model_and_tests_import_torch(path: str) -> None:
    tree = ast.parse(FILES[path], filename=path)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert ("torch" in imported) == (path in ("src/edifice_foo/model.py", "tests/test_foo.py"))


def test_extract_refuses_paths_outside_the_folder() -> None:
    with pytest.raises(ValueError, match="outside"):
        plugin_guide.extract("`../evil.py`:\n\n```py\nx = 1\n```\n")
