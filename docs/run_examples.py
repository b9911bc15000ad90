"""Execute every ```python block of README.md and docs/**/*.md (one namespace per file, in order).

Blocks that are not meant to run use another fence (```text, ```bash). Run by the `docs` nox session.
"""

from __future__ import annotations

import re
import sys
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def run_file(path: Path) -> int:
    """Run the Python blocks of one markdown file; return the number of failing blocks."""
    # A real module in sys.modules, so that dataclasses and the like defined in an example resolve their module.
    module = types.ModuleType(f"docs_example_{path.stem}")
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    failures = 0
    text = path.read_text(encoding="utf-8")
    for number, match in enumerate(BLOCK.finditer(text), start=1):
        line = text.count("\n", 0, match.start()) + 2
        start = time.perf_counter()
        try:
            exec(compile(match.group(1), f"{path.relative_to(ROOT)}:{line}", "exec", dont_inherit=True), namespace)
        except Exception:
            failures += 1
            print(f"FAIL {path.relative_to(ROOT)} block {number} (line {line}):")
            traceback.print_exc()
        else:
            print(f"ok   {path.relative_to(ROOT)} block {number} ({time.perf_counter() - start:.2f} s)")
    return failures


def main() -> int:
    """Run all documentation examples; return an exit code."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    failures = sum(run_file(f) for f in files if f.exists())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
