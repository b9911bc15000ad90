"""Smoke test of the README's install route, run by `nox -s "isolation(distribution='edifice')"`.

The session builds every wheel (`uv build --all-packages`) and installs ``edifice[all]`` from that folder
(`uv pip install --find-links DIR "edifice[all]"`), exactly as the README says. This checks that the meta package's
extras pulled in every released distribution, that each one's plugin loads, that the ``edifice`` command runs, and
that one architecture of each family builds and runs a forward pass (the per-family sessions run the contract).
"""

from __future__ import annotations

import subprocess
import sys

import torch

import edifice
from edifice.catalogue import RELEASED


def main() -> int:
    """Run the checks; return a process exit code."""
    loaded = {r.distribution for r in edifice.plugins() if r.status == "loaded"}
    if loaded != RELEASED:
        print(f"FAIL: edifice[all] should load {sorted(RELEASED)}, loaded {sorted(loaded)}")
        return 1
    listing = subprocess.run(["edifice", "list"], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        print(f"FAIL: `edifice list` exited with {listing.returncode}: {listing.stderr}")
        return 1
    for family in edifice.families():
        name = edifice.list_architectures(family=family)[0]
        spec = edifice.get_spec(name)
        if spec.needs_fit:
            continue
        model = edifice.build(name, **spec.tiny).eval()
        with torch.no_grad():
            model(**edifice.example_inputs(model, 2))
        print(f"  {family:16s} {name:24s} ok (build, forward)")
    print(f"edifice[all]: {', '.join(sorted(loaded))} loaded; {len(edifice.list_architectures())} architectures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
