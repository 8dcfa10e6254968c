"""A progress bar for commands that can run long (destroy, bench small; fsck, gc, dump and
load may use it too): one line on stderr, redrawn in place, and nothing at all when stderr
is not a terminal, so scripts, logs and tests see only the command's own output.

Usage::

    with Progress("deleting keys", unit="key") as bar:
        for page in pages:
            ...
            bar.advance(len(page))

``total`` None shows a count and a rate without a bar (for walks whose size is unknown).
"""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm import tqdm


class Progress:
    """One progress line on stderr while the ``with`` block runs (off when stderr is not a
    TTY)."""

    def __init__(self, description: str, *, total: int | None = None, unit: str = "it",
                 unit_scale: bool = False) -> None:
        self._bar = tqdm(total=total, desc=description, unit=unit, unit_scale=unit_scale,
                         file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
                         dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def describe(self, description: str) -> None:
        """Change the line's label (a command moving to its next phase)."""
        self._bar.set_description_str(description)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.close()
