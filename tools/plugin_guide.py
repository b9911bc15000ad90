"""Extract the files of the plugin guide (docs/plugins.md) into a folder, so that CI can install and test them.

A file of the guide is a fenced block right after a paragraph that opens with its path in backticks and ends with a
colon (`` `src/edifice_foo/model.py` holds the module: ``). The `docs` nox session
runs ``python tools/plugin_guide.py DEST``, installs ``DEST`` beside core's wheel in a fresh environment and runs its
tests there: the guide must run exactly as written.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
#: A paragraph opening with "`path`" and ending with a colon, a blank line, then a fenced block.
_FILE = re.compile(r"^`(?P<path>[\w./-]+)`(?:[^\n]|\n(?!\n))*?:\n\n```\w*\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def extract(markdown: str) -> dict[str, str]:
    """The guide's files, by relative path, in the order they appear."""
    files: dict[str, str] = {}
    for match in _FILE.finditer(markdown):
        path = PurePosixPath(match["path"])
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"the guide names a file outside its folder: {path}")
        if str(path) in files:
            raise ValueError(f"the guide gives {path} twice")
        files[str(path)] = match["body"]
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the guide's files under DEST; return an exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to write the plugin into (created)")
    parser.add_argument("--guide", type=Path, default=GUIDE, help="the markdown file (default docs/plugins.md)")
    args = parser.parse_args(argv)
    files = extract(args.guide.read_text(encoding="utf-8"))
    if not files:
        print(f"no files found in {args.guide}", file=sys.stderr)
        return 1
    for relative, body in files.items():
        target = args.dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
    print(f"{len(files)} files from {args.guide.name} into {args.dest}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
