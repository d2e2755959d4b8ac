"""Progress reporters for ``progress(fraction, message)`` callbacks: a tqdm bar or plain lines."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

ProgressCallback = Callable[[float, str], None]


def progress_lines(stream=None) -> ProgressCallback:
    """One ``PROGRESS <fraction> <message>`` line per call, flushed (what the Slicer module parses)."""
    def report(fraction: float, message: str) -> None:
        print(f"PROGRESS {fraction:.4f} {message}", file=stream or sys.stdout, flush=True)
    return report


@contextmanager
def progress_bar(stream=None) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr (for people), closed on exit."""
    from tqdm import tqdm

    steps = 1000
    bar = tqdm(total=steps, file=stream or sys.stderr, bar_format="{desc:<40.40}{percentage:3.0f}%|{bar}| {elapsed}")

    def report(fraction: float, message: str) -> None:
        bar.set_description_str(message, refresh=False)
        bar.update(max(0, int(round(fraction * steps)) - bar.n))

    try:
        yield report
    finally:
        bar.close()
