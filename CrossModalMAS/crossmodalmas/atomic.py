"""Atomic file writes: write beside the destination under a temporary name, then rename.

An interrupted or failed write never leaves a partial output and never clobbers the
previous file; the temporary names start with ``.partial-`` so the tests can look for
leftovers. One mechanism for every output the package writes (images, figures, JSON,
checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from crossmodalmas.errors import InputError

PARTIAL_PREFIX = ".partial-"


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block
    ends without an exception, removed in every case otherwise.

    Args:
        path: the destination (its folder must exist).
        suffix: the temporary file's suffix (writers pick the format from it, e.g. ``.nii.gz``).
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=suffix, dir=path.parent)
    os.close(handle)
    os.chmod(temp, 0o644)  # mkstemp makes it private; the result is an ordinary file
    try:
        yield Path(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def write_json(data, path: Path) -> None:
    """``data`` as indented JSON at ``path`` (its folder created if needed), atomically.

    Raises:
        InputError: the file cannot be written (a read-only folder, a full disk), naming ``path``.
    """
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, ".json") as temp:
            temp.write_text(text, encoding="utf-8")
    except OSError as error:
        raise InputError(f"{path}: cannot write ({error.strerror or error})") from error
