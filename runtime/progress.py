"""Tiny, dependency-free progress reporting for the runtime's long operations.

Two tools:

* ``Progress(total, label)`` -- a context manager with ``update(n=1)`` that shows one line::

      assembly  [#######.......]  53% 530/1000  3.2 s  eta 2.8 s

  On a terminal (``stream.isatty()``) the line is redrawn in place with carriage returns (at most
  ten redraws a second).  On anything else (CI logs, files, pipes) it prints one line at the end of
  each stage, and for a stage that runs longer than a minute one line a minute before that (a
  log of a long solve still shows it moving).
  ``enabled=False`` prints nothing.  The ETA is extrapolated from the work after the first update,
  so a first unit that includes compilation (Numba's JIT) does not inflate it.

* ``step(label)`` -- a context manager for an operation without intermediate progress; it prints
  ``label ... done in 1.23 s`` when the block ends (``... failed after 1.23 s`` if it raised).
  The object it yields has a ``note`` attribute; text assigned to it is appended in brackets.

Output goes to ``sys.stderr`` unless a ``stream`` is given (looked up when the reporter is
created, so redirected or captured stderr is honoured).
"""

from __future__ import annotations

import contextlib
import sys
import time

__all__ = ["Progress", "step"]

_BAR_WIDTH = 14
_TTY_MIN_INTERVAL = 0.1  # seconds between two redraws on a terminal
_FILE_MIN_INTERVAL = 60.0  # seconds between two lines in a log file


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:  # closed or exotic streams
        return False


def _seconds(t: float) -> str:
    if t < 60.0:
        return f"{t:.1f} s"
    m, s = divmod(int(round(t)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """Progress bar for ``total`` units of work; see the module docstring."""

    def __init__(self, total, label: str, enabled: bool = True, stream=None):
        self.total = max(int(total), 0) if total is not None else None
        self.label = str(label)
        self.enabled = bool(enabled)
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.enabled and _is_tty(self.stream)
        self.done = 0
        self.closed = False
        self._t0 = time.perf_counter()
        self._last_draw = -1.0
        self._width = 0
        self._first = None  # (time, done) at the first update: the rate is measured from there

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Record ``n`` more units of finished work."""
        self.done += int(n)
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, self.done)
        if not self.enabled or self.closed:
            return
        if self.total and self.done >= self.total:
            return  # the final line is written by close()
        if self.tty:
            if now - self._last_draw >= _TTY_MIN_INTERVAL:
                self._last_draw = now
                self._write_tty(self._line(now))
        elif now - max(self._last_draw, self._t0) >= _FILE_MIN_INTERVAL:
            self._last_draw = now
            self._write(self._line(now) + "\n")

    def close(self) -> None:
        """Write the final line (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        line = self._line(time.perf_counter(), final=True)
        if self.tty:
            self._write_tty(line)
            self._write("\n")
        else:
            self._write(line + "\n")

    # -- internals -------------------------------------------------------------------------
    def _line(self, now: float, final: bool = False) -> str:
        elapsed = now - self._t0
        if not self.total:
            return f"{self.label}  {self.done}  {_seconds(elapsed)}"
        frac = min(max(self.done / self.total, 0.0), 1.0)
        filled = int(round(frac * _BAR_WIDTH))
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        text = (f"{self.label}  [{bar}] {int(100 * frac):3d}% {self.done}/{self.total}"
                f"  {_seconds(elapsed)}")
        eta = None if final else self._eta(now)
        if eta is not None:
            text += f"  eta {_seconds(eta)}"
        return text

    def _eta(self, now):
        """Seconds left at the rate since the first update (None until there is such a rate)."""
        if self._first is None or not 0 < self.done < self.total:
            return None
        t_first, done_first = self._first
        if self.done <= done_first or now <= t_first:
            return None
        return (now - t_first) * (self.total - self.done) / (self.done - done_first)

    def _write_tty(self, line: str) -> None:
        pad = " " * max(self._width - len(line), 0)
        self._width = len(line)
        self._write("\r" + line + pad)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # progress output must never break a computation
            pass


class _Step:
    def __init__(self) -> None:
        self.note = ""


@contextlib.contextmanager
def step(label: str, enabled: bool = True, stream=None):
    """Time a block and print ``label ... done in 1.23 s`` when it ends."""
    info = _Step()
    t0 = time.perf_counter()
    ok = False
    try:
        yield info
        ok = True
    finally:
        if enabled:
            out = sys.stderr if stream is None else stream
            dt = time.perf_counter() - t0
            text = f"{label} ... {'done in' if ok else 'failed after'} {dt:.2f} s"
            if info.note:
                text += f" ({info.note})"
            try:
                out.write(text + "\n")
                out.flush()
            except Exception:
                pass
