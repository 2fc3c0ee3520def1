"""`BlockIndex`: cheap lookups, batched LRU touches and one-entry eviction on diskcache's SQLite index."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW

__all__ = ["BlockIndex", "Entry"]

# What diskcache's Disk.filename() makes: two levels of hex directories and a random name. A
# row naming anything else was not written by diskcache (a forged row in a shared directory):
# following it could read, and on discard delete, a file outside the cache.
_FILENAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")

# (tag, inline bytes or None, block file path or None)
Entry = tuple[object, "bytes | None", "str | None"]
Removed = tuple[bool, "str | None"]  # (whether an entry was deleted, its block file)


class BlockIndex:
    """Reads and LRU bookkeeping on the ``Cache`` table of a diskcache directory, on one connection.

    diskcache's own ``get`` updates the entry's access time in a write transaction on every hit
    (1-2 ms on a quiet machine, up to 15 ms under load, and a write lock other processes wait
    for). Here a hit is one read-only ``SELECT``; its access time is remembered and written,
    with every other hit remembered since, in one transaction: before this object evicts an
    entry (so its own evictions see every hit: the LRU order is exact), once the oldest
    remembered hit is *touch_delay* seconds old (at the next hit), and at `close`. Other processes
    sharing the directory see this one's hits in their eviction order after that delay.

    Tied to diskcache 5.6's documented schema (setup.cfg pins it; tests/integration/test_cache.py
    pins the behaviour). Only entries diskcache would have written for a text key are served:
    raw bytes in the row, or a block file named as diskcache names them; anything else (a
    pickled value, a path outside the directory) is no entry.

    Args:
        directory: The diskcache directory.
        timeout: Seconds to wait for another process's write lock (SQLite's busy timeout).
        touch_delay: Seconds a hit's access time may wait before it is written.
        clock: Wall-clock seconds, as diskcache records access times (tests pass their own).
    """

    def __init__(self, directory: str, timeout: float, *, touch_delay: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._timeout = timeout
        self._delay = touch_delay
        self._clock = clock
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._touches: dict[str, float] = {}  # key -> access time not yet written
        self._since: float | None = None  # when the oldest of them was remembered
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        """The connection (made on first use); call with the lock held."""
        if self._closed:
            # A call racing close() in another thread: a miss, as for a closed cache.
            raise diskcache.Timeout("the block index is closed")
        if self._con is None:
            self._con = sqlite3.connect(os.path.join(self.directory, diskcache.core.DBNAME), timeout=self._timeout,
                                        isolation_level=None, check_same_thread=False)
        return self._con

    def find(self, key: str) -> Entry | None:
        """The entry stored under text *key*, or None (call `touch` once it has served a hit)."""
        with self._lock:
            row = self._connection().execute(
                "SELECT tag, mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        if row is None:
            return None
        tag, mode, filename, value = row
        if mode == MODE_RAW and isinstance(value, bytes):
            entry: Entry = (tag, value, None)
        elif mode == MODE_BINARY and isinstance(filename, str) and _FILENAME.fullmatch(filename):
            entry = (tag, None, os.path.join(self.directory, filename))
        else:
            return None
        return entry

    def touch(self, key: str) -> bool:
        """Remember an access of *key* now; True when the remembered accesses are due to be written."""
        now = self._clock()
        with self._lock:
            self._touches[key] = now
            if self._since is None:
                self._since = now
            return now - self._since >= self._delay

    def flush(self) -> None:
        """Write the remembered access times (one transaction)."""
        with self._lock:
            if self._touches:
                self._transaction(lambda con: None)

    def remove_oldest(self) -> Removed:
        """Delete the least recently used entry (after writing the remembered access times):
        (whether one was deleted, its block file to remove, if any).

        The row goes by rowid, so a foreign entry in a shared directory (a pickled key) is never
        unpickled to name it. The file is the caller's to remove, after the commit, as diskcache
        does: a reader may still hold it open (or mapped), which unlinking does not disturb.
        """
        with self._lock:
            return self._transaction(lambda con: self._delete(
                con, con.execute("SELECT rowid, filename FROM Cache ORDER BY access_time LIMIT 1").fetchone()))

    def remove(self, key: str) -> Removed:
        """Delete the entry stored under text *key*, as `remove_oldest` does."""
        with self._lock:
            return self._transaction(lambda con: self._delete(
                con, con.execute("SELECT rowid, filename FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()))

    @staticmethod
    def _delete(con: sqlite3.Connection, row: tuple[int, object] | None) -> Removed:
        """Delete *row* (rowid, filename); its file's path when diskcache could have named it so."""
        if row is None:
            return False, None
        con.execute("DELETE FROM Cache WHERE rowid = ?", (row[0],))
        filename = row[1]
        return True, filename if isinstance(filename, str) and _FILENAME.fullmatch(filename) else None

    def _transaction(self, work: Callable[[sqlite3.Connection], Removed | None]) -> Removed:
        """Write the remembered touches, then *work*, in one write transaction; lock held."""
        con = self._connection()
        try:
            con.execute("BEGIN IMMEDIATE")  # one writer at a time, as diskcache's own transactions
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise diskcache.Timeout(str(exc)) from exc  # contention (a miss), not a damaged database
            raise
        try:
            if self._touches:
                con.executemany("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1",
                                [(when, key) for key, when in self._touches.items()])
            result = work(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._touches.clear()
        self._since = None
        return result or (False, None)

    def close(self) -> None:
        """Write the remembered access times if the database lets us, and close the connection."""
        with self._lock:
            try:
                if self._touches and self._con is not None:
                    self._transaction(lambda con: None)
            except (sqlite3.Error, diskcache.Timeout):
                pass  # access times are a hint: losing the last second of them only blurs the LRU order
            finally:
                self._closed = True
                con, self._con = self._con, None
                if con is not None:
                    con.close()
