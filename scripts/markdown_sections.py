"""Named sections of a Markdown file, so that each benchmark rewrites only its own part of BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- section:{name} -->", f"<!-- /section:{name} -->"


def replace_section(path: Path, name: str, lines: list[str]) -> None:
    """Put ``lines`` between the markers of section ``name`` in ``path``; the section is appended
    where the file lacks it, and the file is created where it does not exist."""
    path = Path(path)
    start, end = _markers(name)
    block = "\n".join([start, *lines, end])
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
