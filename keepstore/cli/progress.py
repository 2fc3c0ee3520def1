"""Progress of ``keep put`` and ``keep get`` on stderr: a tqdm bar, JSON lines, or a summary line."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import IO, Any

__all__ = ["JSON_INTERVAL", "Progress", "ProgressMode", "Snapshot", "Summary", "format_bytes", "format_duration",
           "format_rate", "json_notices", "notify", "open_progress", "showing_retries"]

JSON_INTERVAL = 0.5  # seconds between two JSON progress lines (start, notices and done always go out)

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: float) -> str:
    """*n* bytes in binary (IEC) units with three significant digits: ``512 B``, ``1.50 KiB``, ``20.0 MiB``."""
    if n < 1024:
        return f"{int(n)} B"
    unit = _UNITS[0]
    for unit in _UNITS:  # noqa: B007  (the unit the loop stops at is the one wanted)
        n /= 1024
        if n < 1024:
            break
    digits = 2 if n < 10 else 1 if n < 100 else 0
    return f"{n:.{digits}f} {unit}"


def format_rate(nbytes: float, seconds: float) -> str:
    """Bytes per second in binary units (``16.7 MiB/s``), or ``-`` when no time has passed."""
    return f"{format_bytes(nbytes / seconds)}/s" if seconds > 0 else "-"


def format_duration(seconds: float) -> str:
    """``0.84 s``, ``12.3 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressMode(str, enum.Enum):
    """How progress is shown: ``auto`` is a bar on a terminal and nothing otherwise."""

    AUTO = "auto"
    BAR = "bar"
    JSON = "json"
    SUMMARY = "summary"
    NONE = "none"

    @classmethod
    def parse(cls, text: str) -> "ProgressMode":
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"progress mode {text!r} is not one of {choices}") from None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The counts of one transfer at one moment (what a progress line shows).

    Args:
        op: ``"put"`` or ``"get"``.
        bytes: Bytes moved so far: read in (put) or written out (get), skipped bytes included.
        total_bytes: Bytes to move, if known.
        files: Files done.
        total_files: Files to move, if known.
        stored_bytes: Put: bytes in blocks the store has confirmed.
        skipped_bytes: Bytes not sent or written because they were there already.
        elapsed: Seconds since the transfer started.
        state: A waiting state shown, e.g. a retry being waited for.
    """

    op: str
    bytes: int  # moved so far: read in (put) or written out (get), skipped bytes included
    total_bytes: int | None
    files: int
    total_files: int | None
    stored_bytes: int  # put: in blocks the store has confirmed
    skipped_bytes: int  # not sent or written because they were there already
    elapsed: float
    state: str | None = None  # e.g. a retry being waited for

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["elapsed"] = round(self.elapsed, 3)
        return d


@dataclasses.dataclass(frozen=True)
class Summary:
    """The end of a transfer: files, bytes, time, rate and skipped bytes.

    Args:
        op: ``"put"`` or ``"get"``.
        files: Files moved.
        bytes: Bytes moved.
        stored_bytes: Put: bytes the store confirmed.
        skipped_bytes: Bytes that needed no transfer.
        elapsed: Seconds the transfer took.
    """

    op: str
    files: int
    bytes: int
    stored_bytes: int
    skipped_bytes: int
    elapsed: float

    @property
    def rate(self) -> float | None:
        """Bytes moved per second, or None when no time was measured."""
        return self.bytes / self.elapsed if self.elapsed > 0 else None

    def line(self) -> str:
        files = "1 file" if self.files == 1 else f"{self.files} files"
        return (f"{self.op}: {files}, {format_bytes(self.bytes)} in {format_duration(self.elapsed)} "
                f"({format_rate(self.bytes, self.elapsed)}), {format_bytes(self.skipped_bytes)} skipped")

    def to_dict(self) -> dict[str, Any]:
        rate = self.rate
        return {"op": self.op, "files": self.files, "bytes": self.bytes, "stored_bytes": self.stored_bytes,
                "skipped_bytes": self.skipped_bytes, "elapsed": round(self.elapsed, 3),
                "rate": None if rate is None else round(rate, 1)}


class _View:
    """Shows what a `Progress` counts; this one shows nothing."""

    def update(self, snap: Snapshot) -> None:
        pass

    def notice(self, message: str) -> None:
        pass

    def done(self, summary: Summary) -> None:
        pass

    def close(self) -> None:
        pass


class _SummaryView(_View):
    """Only the summary line (and notices), for logs."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def notice(self, message: str) -> None:
        print(f"keep: {message}", file=self.stream, flush=True)

    def done(self, summary: Summary) -> None:
        print(summary.line(), file=self.stream, flush=True)


class _JsonView(_View):
    """One JSON object per line: ``start``, ``progress`` (at most every *interval* s), ``notice``, ``done``."""

    def __init__(self, stream: IO[str], clock: Callable[[], float], interval: float) -> None:
        self.stream, self.clock, self.interval = stream, clock, interval
        self._last: float | None = None

    def _emit(self, event: str, body: dict[str, Any]) -> None:
        self.stream.write(json.dumps({"event": event, **body}, sort_keys=True) + "\n")
        self.stream.flush()

    def update(self, snap: Snapshot) -> None:
        now = self.clock()
        if self._last is None:
            self._emit("start", snap.to_dict())
        elif now - self._last >= self.interval:
            self._emit("progress", snap.to_dict())
        else:
            return
        self._last = now

    def notice(self, message: str) -> None:
        self._emit("notice", {"message": message})

    def done(self, summary: Summary) -> None:
        self._emit("done", summary.to_dict())


def _bar_class() -> Any:
    from tqdm import tqdm

    class _IecBar(tqdm):  # type: ignore[misc]  # tqdm is untyped
        """tqdm with IEC units (KiB, MiB) and our byte formatting, usable in ``bar_format``."""

        @property
        def format_dict(self) -> MutableMapping[str, Any]:
            d: MutableMapping[str, Any] = super().format_dict
            n, total, elapsed, rate = d["n"], d["total"], d["elapsed"], d["rate"]
            if rate is None and elapsed:
                rate = n / elapsed
            d.update(n_iec=format_bytes(n), total_iec=format_bytes(total) if total is not None else "?",
                     rate_iec=f"{format_bytes(rate)}/s" if rate else "?/s")
            return d

    return _IecBar


_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_iec}/{total_iec} [{elapsed}<{remaining}, {rate_iec}{postfix}]"
_BAR_NO_TOTAL = "{desc}: {n_iec} [{elapsed}, {rate_iec}{postfix}]"


def _shape(stream: IO[str]) -> tuple[int | None, int | None]:
    """The terminal's (columns, rows) for tqdm, 80 x 24 where it reports 0 (a fresh pty, ``script``
    without a terminal): tqdm would fit the bar into 0 columns, or hide it below row -1, and draw
    nothing. None lets tqdm ask."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):  # not a terminal, or no file descriptor (io.StringIO)
        return None, None
    return size.columns or 80, size.lines or 24


class _BarView(_View):
    """A tqdm bar, erased at the end and replaced by the summary line."""

    def __init__(self, stream: IO[str], op: str, total: int | None) -> None:
        self.stream = stream
        # miniters=1: every update is considered (updates come per chunk, not per byte), mininterval paces redraws
        columns, rows = _shape(stream)
        self.bar = _bar_class()(total=total, desc=op, file=stream, leave=False, unit="B", miniters=1,
                                ncols=columns, nrows=rows,
                                bar_format=_BAR if total is not None else _BAR_NO_TOTAL)

    def update(self, snap: Snapshot) -> None:
        parts = []
        if snap.op == "put" and snap.stored_bytes < snap.bytes:
            parts.append(f"stored {format_bytes(snap.stored_bytes)}")
        if snap.skipped_bytes:
            parts.append(f"skipped {format_bytes(snap.skipped_bytes)}")
        if snap.state:
            parts.append(snap.state)
        postfix = ", ".join(parts)
        changed = postfix != (self.bar.postfix or "")
        if changed:
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(snap.bytes - self.bar.n)  # tqdm redraws at most every mininterval
        if changed:  # e.g. a wait for a retry: show it now, though no byte moved
            self.bar.refresh()

    def notice(self, message: str) -> None:
        self.bar.write(f"keep: {message}", file=self.stream)

    def done(self, summary: Summary) -> None:
        self.bar.close()
        print(summary.line(), file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()


class Progress:
    """Counts the bytes and files of one put or get and shows them through a view; thread-safe.

    Use as a context manager: `finish` shows the summary; leaving on an error only clears the bar.
    ``advance`` counts bytes moved (read in for put, written out for get), ``stored`` bytes the
    store confirmed, ``skipped`` bytes that needed no transfer (they count as moved, too).

    Args:
        op: ``"put"`` or ``"get"``.
        total_bytes: Bytes to move, if known.
        total_files: Files to move, if known.
        view: Where the counts are shown (bar, JSON lines or nothing).
        clock: The monotonic clock rates are measured with.
    """

    def __init__(self, op: str, *, total_bytes: int | None = None, total_files: int | None = None,
                 view: _View | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.op, self.total_bytes, self.total_files = op, total_bytes, total_files
        self._view = view or _View()
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._bytes = self._stored = self._skipped = self._files = 0
        self._state: str | None = None
        self._summary: Summary | None = None
        with self._lock:
            self._view.update(self._snapshot())

    def _snapshot(self) -> Snapshot:
        return Snapshot(self.op, self._bytes, self.total_bytes, self._files, self.total_files, self._stored,
                        self._skipped, self._clock() - self._start, self._state)

    def _changed(self) -> None:
        if self._summary is None:
            self._view.update(self._snapshot())

    def advance(self, n: int) -> None:
        with self._lock:
            self._bytes += n
            self._state = None  # bytes move again: no longer waiting
            self._changed()

    def stored(self, n: int) -> None:
        with self._lock:
            self._stored += n
            self._state = None
            self._changed()

    def skipped(self, n: int) -> None:
        with self._lock:
            self._skipped += n
            self._bytes += n
            self._changed()

    def counted_as_skipped(self, n: int) -> None:
        """Of the bytes already counted by `advance`, *n* needed no transfer (a put's receipt
        says how many were found stored): shown as skipped, not counted again."""
        with self._lock:
            self._skipped += n
            self._changed()

    def file_done(self, count: int = 1) -> None:
        with self._lock:
            self._files += count
            self._changed()

    def waiting(self, state: str | None) -> None:
        """Show (or, with None, clear) a state such as a retry being waited for."""
        with self._lock:
            self._state = state
            self._changed()

    def notice(self, message: str) -> None:
        """A one-line message that does not garble the bar."""
        with self._lock:
            self._view.notice(message)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot()

    def finish(self, files: int | None = None) -> Summary:
        """End the transfer (*files*: the count, when not counted with `file_done`) and show the summary."""
        with self._lock:
            if self._summary is None:
                self._summary = Summary(self.op, self._files if files is None else files, self._bytes,
                                        self._stored, self._skipped, self._clock() - self._start)
                self._view.done(self._summary)
            return self._summary

    def close(self) -> None:
        with self._lock:
            self._view.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_progress(mode: ProgressMode | str, op: str, *, total_bytes: int | None = None,
                  total_files: int | None = None, stream: IO[str] | None = None,
                  clock: Callable[[], float] = time.monotonic, interval: float = JSON_INTERVAL) -> Progress:
    """A `Progress` shown as *mode* on *stream* (default stderr); ``auto`` draws a bar only on a terminal."""
    mode = ProgressMode.parse(mode) if isinstance(mode, str) else mode
    out = stream if stream is not None else sys.stderr
    if mode is ProgressMode.AUTO:
        mode = ProgressMode.BAR if out.isatty() else ProgressMode.NONE
    view: _View
    if mode is ProgressMode.BAR:
        view = _BarView(out, op, total_bytes)
    elif mode is ProgressMode.JSON:
        view = _JsonView(out, clock, interval)
    elif mode is ProgressMode.SUMMARY:
        view = _SummaryView(out)
    else:
        view = _View()
    return Progress(op, total_bytes=total_bytes, total_files=total_files, view=view, clock=clock)


def notify(mode: ProgressMode | str, message: str, stream: IO[str] | None = None) -> None:
    """A notice outside a transfer, shown as *mode* shows notices (a JSON line for ``json``, none for ``none``)."""
    mode = ProgressMode.parse(mode) if isinstance(mode, str) else mode
    out = stream if stream is not None else sys.stderr
    if mode is ProgressMode.JSON:
        _JsonView(out, time.monotonic, JSON_INTERVAL).notice(message)
    elif mode is not ProgressMode.NONE:
        _SummaryView(out).notice(message)


@contextlib.contextmanager
def showing_retries(progress: Progress, notices: Any) -> Iterator[Progress]:
    """While inside, the client's retry notices go through *progress*.

    *notices* is ``keep``'s retry-notice callback (``args.on_retry``: a ``write`` attribute that
    prints a line, and ``listen(listener)``), or None. Its lines then appear above the bar (or as
    JSON ``notice`` lines, so ``--progress=json`` stays all JSON), and the bar shows the wait.
    """
    write = getattr(notices, "write", None)
    if write is None:
        yield progress
        return
    active = True

    def waiting(notice: Any) -> None:
        if active:
            progress.waiting(f"waiting {notice.wait:.1f} s to retry (round {notice.round} of {notice.rounds})")

    notices.write = lambda line: progress.notice(str(line).removeprefix("keep: "))
    listen = getattr(notices, "listen", None)
    if listen is not None:
        listen(waiting)
    try:
        yield progress
    finally:
        active = False
        notices.write = write


def json_notices(args: Any, stream: IO[str] | None = None) -> None:
    """With ``--progress=json``, the client's retry lines (``args.on_retry.write``) become JSON
    ``notice`` lines for the whole command, also before and after the transfer (a manifest fetch),
    so stderr stays all JSON. Otherwise nothing changes."""
    notices = getattr(args, "on_retry", None)
    if notices is None or getattr(args, "progress", None) != ProgressMode.JSON.value or \
            getattr(notices, "write", None) is None:
        return
    notices.write = lambda line: notify(ProgressMode.JSON, str(line).removeprefix("keep: "), stream)
