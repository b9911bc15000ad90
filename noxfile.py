"""Nox sessions (DESIGN §9). `uv run nox` runs the CI set; `slow` and `gpu` are opt-in.

Every session installs from the committed lock (`uv sync --locked`) into its own virtual environment, so a session
proves the lock is complete. Family distributions are discovered from `packages/*`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "tests", "isolation", "docs"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PYTHON = "3.11"
#: Distributions that register architectures (every member but the code-less meta package and core).
FAMILIES = sorted(
    p.name
    for p in (ROOT / "packages").iterdir()
    if (p / "pyproject.toml").exists() and p.name not in ("edifice", "edifice-core")
)
TEST_PLUGINS = [
    str(p) for p in sorted((ROOT / "tests" / "plugins").glob("edifice-*")) if (p / "pyproject.toml").exists()
]


def _sync(session: nox.Session, *groups: str) -> None:
    """Install the workspace and the given dependency groups from uv.lock into the session's environment."""
    args = ["uv", "sync", "--locked", "--all-packages", "--no-default-groups"]
    for group in groups:
        args += ["--group", group]
    session.run_install(*args, env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}, silent=True)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + format check, and the import contract: no distribution imports another."""
    _sync(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("python", "tools/check_imports.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy over every package's sources (strict on core, configured in pyproject.toml)."""
    _sync(session, "lint", "test")
    session.run("mypy", *sorted(str(p) for p in (ROOT / "packages").glob("*/src")))


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """All package tests and the registry-wide contract in one pytest run, with core's branch coverage."""
    _sync(session, "test")
    if TEST_PLUGINS:
        session.run_install("uv", "pip", "install", "--no-deps", *TEST_PLUGINS, silent=True)
    session.env["EDIFICE_TEST_PLUGINS"] = "1"
    workers = os.environ.get("EDIFICE_TEST_WORKERS", "2")
    # Mutation check (DESIGN §6): every signature test that calls a hot op must fail when that op is swapped for the
    # wrong implementation in edifice.testing.mutate.MUTATIONS.
    session.run("pytest", "-q", "-n", workers, "-m", "signature", "-p", "no:warnings", "--edifice-mutate", "all")
    session.run(
        "pytest",
        "-n",
        workers,
        "--edifice-require-signatures",
        "--cov=edifice",
        "--cov-branch",
        "--cov-report=term",
        "--cov-fail-under=90",
        *session.posargs,
    )


@nox.session(python=PYTHON)
@nox.parametrize("distribution", [*FAMILIES, "edifice"])
def isolation(session: nox.Session, distribution: str) -> None:
    """Core plus one family from built wheels: discovery, listing, and a build-and-forward smoke of every entry.

    ``distribution='edifice'`` (the meta package) tests the README's install route instead: every wheel built with
    ``uv build --all-packages``, then ``edifice[all]`` installed from that folder through the meta package's extras.
    """
    wheels = Path(tempfile.mkdtemp(prefix="edifice-wheels-"))
    try:
        if distribution == "edifice":
            _install_from_extras(session, wheels)
            return
        for package in ("edifice-core", distribution):
            session.run(
                "uv", "build", "--quiet", "--wheel", "--package", package, "--out-dir", str(wheels), external=True
            )
        # Pinned third-party requirements from the lock: the family's own, and core's `testing` extra (pytest),
        # since the smoke test runs the contract kit.
        requirements = []
        for package, extra in ((distribution, ()), ("edifice-core", ("--extra", "testing"))):
            path = wheels / f"requirements-{package}.txt"
            session.run(
                "uv", "export", "--frozen", "--quiet", "--no-hashes", "--no-header", "--no-default-groups",
                "--no-emit-workspace", "--package", package, *extra, "--output-file", str(path), external=True,
            )  # fmt: skip
            requirements += ["-r", str(path)]
        session.run_install("uv", "pip", "install", "--quiet", *requirements, *map(str, wheels.glob("*.whl")))
        session.run(
            "python", str(ROOT / "tests" / "isolation_smoke.py"), distribution, env={"EDIFICE_STRICT_PLUGINS": "1"}
        )
    finally:
        shutil.rmtree(wheels, ignore_errors=True)


def _install_from_extras(session: nox.Session, wheels: Path) -> None:
    """The README's route: build every wheel into one folder, install ``edifice[all]`` from it, smoke-test it."""
    session.run("uv", "build", "--quiet", "--all-packages", "--wheel", "--out-dir", str(wheels), external=True)
    # Third-party requirements pinned by the lock first, so that the README's command finds them satisfied.
    requirements = wheels / "requirements-edifice-all.txt"
    session.run(
        "uv", "export", "--frozen", "--quiet", "--no-hashes", "--no-header", "--no-default-groups",
        "--no-emit-workspace", "--package", "edifice", "--extra", "all", "--output-file", str(requirements),
        external=True,
    )  # fmt: skip
    session.run_install("uv", "pip", "install", "--quiet", "-r", str(requirements))
    session.run_install("uv", "pip", "install", "--quiet", "--find-links", str(wheels), "edifice[all]")
    session.run("python", str(ROOT / "tests" / "meta_install_smoke.py"), env={"EDIFICE_STRICT_PLUGINS": "1"})


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Regenerate the architecture index and API reference (fail if stale), run every doc example, build the site,
    and install and test the plugin that docs/plugins.md writes."""
    _sync(session, "docs")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("python", "docs/generate.py", "--check")
    session.run("python", "docs/run_examples.py")
    session.run("mkdocs", "build", "--strict", "--quiet", "--site-dir", str(Path(session.create_tmp()) / "site"))
    _plugin_guide(session)


def _plugin_guide(session: nox.Session) -> None:
    """docs/plugins.md runs as written: its files, installed beside core's wheel in a fresh venv, pass their tests."""
    work = Path(tempfile.mkdtemp(prefix="edifice-plugin-guide-"))
    try:
        plugin, wheels, venv = work / "edifice-foo", work / "wheels", work / "venv"
        session.run("python", "tools/plugin_guide.py", str(plugin))
        session.run(
            "uv", "build", "--quiet", "--wheel", "--package", "edifice-core", "--out-dir", str(wheels), external=True
        )
        requirements = wheels / "requirements-edifice-core.txt"
        session.run(
            "uv", "export", "--frozen", "--quiet", "--no-hashes", "--no-header", "--no-default-groups",
            "--no-emit-workspace", "--package", "edifice-core", "--extra", "testing",
            "--output-file", str(requirements), external=True,
        )  # fmt: skip
        python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
        session.run("uv", "venv", "--quiet", "--python", PYTHON, str(venv), external=True)
        # The guide's `pip install --find-links wheels -e ".[test]"`, with the lock's pins for third-party packages.
        session.run(
            "uv", "pip", "install", "--quiet", "--python", str(python), "-r", str(requirements),
            "--find-links", str(wheels), "-e", f"{plugin}[test]", external=True,
        )  # fmt: skip
        with session.chdir(plugin):
            session.run(str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", external=True)
            session.run(str(python), "-m", "edifice", "list", "--family", "foo", external=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@nox.session(python=PYTHON, default=False)
def slow(session: nox.Session) -> None:
    """Opt-in: learning tests and inductor compilation."""
    _sync(session, "test")
    session.run("pytest", "-m", "slow", "-n", os.environ.get("EDIFICE_TEST_WORKERS", "2"), *session.posargs)


@nox.session(python=PYTHON, default=False)
def fuzz(session: nox.Session) -> None:
    """Opt-in: the registry-wide fuzz tests with fresh random cases, EDIFICE_FUZZ_EXAMPLES (default 50) per test."""
    _sync(session, "test")
    session.env["EDIFICE_FUZZ_EXAMPLES"] = os.environ.get("EDIFICE_FUZZ_EXAMPLES", "50")
    workers = os.environ.get("EDIFICE_TEST_WORKERS", "2")
    session.run("pytest", "tests/test_fuzz.py", "-n", workers, *session.posargs)


@nox.session(python=PYTHON, default=False)
def gpu(session: nox.Session) -> None:
    """Opt-in, on a CUDA machine: kernel overrides against their references and GPU model tests."""
    _sync(session, "test")
    session.run("pytest", "-m", "gpu", *session.posargs)
