"""Print the CHANGELOG.md section of one version (the GitHub release's notes).

    python3 .github/release_notes.py 1.2.3 > notes.md

Exits with status 1, saying so, when CHANGELOG.md has no `## [1.2.3]` or `## 1.2.3`
section: a release without notes is a release someone forgot to describe.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"


def notes(text: str, version: str) -> str | None:
    heading = re.compile(rf"^## \[?v?{re.escape(version)}\]?(?:\s|$)", re.MULTILINE)
    match = heading.search(text)
    if match is None:
        return None
    rest = text[match.end() :]
    following = re.search(r"^## ", rest, re.MULTILINE)
    body = rest[: following.start()] if following else rest
    return body.split("\n", 1)[1].strip() if "\n" in body else ""


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: release_notes.py VERSION", file=sys.stderr)
        return 2
    version = argv[1].removeprefix("v")
    found = notes(CHANGELOG.read_text(encoding="utf-8"), version)
    if not found:
        print(f"CHANGELOG.md has no notes for {version}", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
