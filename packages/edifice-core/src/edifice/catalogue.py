"""The catalogue of every planned architecture (name -> family, distribution), shipped as data in core.

It lets an unknown-architecture error say which distribution to install even when that distribution is absent.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources

__all__ = ["CatalogueEntry", "catalogue", "install_hint"]

#: Blocks other distributions may ask for by name, and the distribution that provides each.
BLOCK_PROVIDERS: dict[str, str] = {
    "mamba": "edifice-ssm",
    "mamba2": "edifice-ssm",
    "hyena": "edifice-ssm",
}


@dataclass(frozen=True)
class CatalogueEntry:
    """One row of the catalogue."""

    name: str
    family: str
    distribution: str
    paper: str


@functools.cache
def catalogue() -> dict[str, CatalogueEntry]:
    """Every catalogue row, by registry name."""
    text = resources.files("edifice").joinpath("data/catalogue.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return {r["name"]: CatalogueEntry(r["name"], r["family"], r["distribution"], r["paper"]) for r in rows}


def install_hint(distribution: str) -> str:
    """The pip command that installs ``distribution`` through the meta package's extras."""
    short = distribution.removeprefix("edifice-")
    return f'pip install "edifice[{short}]"'
