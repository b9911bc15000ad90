"""The no-cross-imports contract (DESIGN §1): a distribution imports only itself, `edifice` and third parties.

Families share code only through core (blocks, ops) and through names (`requires_blocks`, `requires_archs`); an import
of another family's module is a hidden dependency that breaks per-family installs. Run by the `lint` nox session.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_names() -> dict[str, str]:
    """Map each workspace distribution's import package to the distribution name."""
    out = {}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        src = pyproject.parent / "src"
        if not src.is_dir():
            continue  # the code-less meta package
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
        for package in src.iterdir():
            if (package / "__init__.py").exists():
                out[package.name] = name
    return out


def imported_roots(path: Path) -> list[tuple[int, str]]:
    """Top-level module names imported by a source file, with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def main() -> int:
    """Check every distribution's sources; print violations and return an exit code."""
    packages = import_names()
    violations = []
    for package, dist in packages.items():
        allowed = {package} if package == "edifice" else {package, "edifice"}
        for path in sorted((ROOT / "packages" / dist / "src" / package).rglob("*.py")):
            for line, root in imported_roots(path):
                if root in packages and root not in allowed:
                    violations.append(f"{path.relative_to(ROOT)}:{line}: {package} imports {root} ({packages[root]})")
    for v in violations:
        print(v)
    print(f"import contract: {len(packages)} packages checked, {len(violations)} violations")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
