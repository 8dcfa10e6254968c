"""A progress bar for commands that can run long (fsck, gc, dump, load, destroy, deploy,
bench small): one line on stderr, redrawn in place by tqdm, and no bar at all when stderr
is not a terminal, so scripts, logs and tests see only the command's own output.

Usage::

    with Progress("deleting keys", unit="key") as bar:
        for page in pages:
            ...
            bar.advance(len(page))

``total`` None shows a count and a rate without a bar (for walks whose size is unknown).
:meth:`Progress.set` moves to an absolute position (for callers told "n of total so far");
:meth:`Progress.phase` starts the next phase of a command on the same line.

**Logs.**  A command whose run can take minutes (fsck reading every block) passes
``log_every=SECONDS``: when stderr is not a terminal it then writes a plain line every
that many seconds (none for a run shorter than that), and a last one when the work is
done if it wrote any -- so a log of a long run shows it moving.  Without ``log_every``
nothing at all is written when stderr is not a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from tqdm import tqdm


def size_text(n: int) -> str:
    """``n`` bytes for a person: ``512 bytes``, ``4.0 KiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} bytes"
    x, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if x < 1024:
            break
        x, unit = x / 1024, bigger
    return f"{x:.1f} {unit}"


class Progress:
    """One progress line on ``stream`` (default stderr) while the ``with`` block runs: a
    tqdm bar on a terminal, else nothing, or a log line now and then (module docstring).

    Invariant: the position only moves forward within a phase; :meth:`set` to a lower
    position is ignored (a caller's counter never goes back)."""

    def __init__(self, description: str, *, total: int | None = None, unit: str = "it",
                 unit_scale: bool = False, log_every: float | None = None,
                 stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._tty = self._stream.isatty()
        self._description = description
        self._total = total
        self._unit = unit
        self._n = 0
        self._note = ""
        self._log_every = None if self._tty else log_every
        self._clock = clock
        self._last = clock()
        self._logged = False  # a log line was written in this phase
        self._finished = False  # this phase's last log line was written
        self._bar = tqdm(total=total, desc=description, unit=unit, unit_scale=unit_scale,
                         unit_divisor=1024 if unit == "B" else 1000, file=self._stream,
                         disable=not self._tty, leave=False, dynamic_ncols=True)

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """Move ``n`` units forward; ``note`` (such as ``3/10 files``) follows the bar."""
        self.set(self._n + n, note)

    def set(self, n: int, note: str | None = None) -> None:
        """Move to position ``n`` (see the class invariant); ``note`` as in :meth:`advance`."""
        if note is not None and note != self._note:
            self._note = note
            self._bar.set_postfix_str(note, refresh=False)
        if n > self._n:
            self._bar.update(n - self._n)
            self._n = n
        if self._log_every is not None and not self._finished:
            self._log(self._log_every)

    def describe(self, description: str) -> None:
        """Change the line's label (a command moving to its next phase)."""
        self._description = description
        self._bar.set_description_str(description)

    def phase(self, description: str, total: int | None = None,
              unit: str | None = None) -> None:
        """Start the next phase on the same line: a new label, total (and unit), at 0."""
        self._description, self._total, self._n, self._note = description, total, 0, ""
        if unit is not None:
            self._unit = self._bar.unit = unit
        self._logged = self._finished = False
        self._last = self._clock()
        self._bar.reset(total)
        self._bar.set_postfix_str("", refresh=False)
        self._bar.set_description_str(description)

    def _log(self, every: float) -> None:
        now = self._clock()
        if self._total is not None and self._n >= self._total:
            if not self._logged:
                return  # a quick run logs nothing; a logged one ends with its last line
            self._finished = True
        elif now - self._last < every:
            return
        self._last = now
        self._logged = True
        self._stream.write(self._line() + "\n")
        self._stream.flush()

    def _line(self) -> str:
        parts = [self._note] if self._note else []
        n, total = self._n, self._total
        if self._unit == "B":
            done = size_text(n) if total is None else f"{size_text(n)} of {size_text(total)}"
        else:
            done = f"{n} {self._unit}s" if total is None else f"{n} of {total} {self._unit}s"
        if total is not None:
            done += f" ({100 * n // total if total else 100}%)"
        return f"{self._description}: {', '.join(parts + [done])}"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Erase a bar drawn in place, so the command's result follows on a clean line."""
        self._bar.close()
