"""A dialogue store's reserve: a file preallocated on the database's disk that holds every queued
row until a commit covers it (``Journal``), so a row the write-behind queue accepted survives a full
disk and a ``kill -9`` (see ``memory.write_behind`` for how the queue uses it).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

from .batch import Batch, add_row, row_json

__all__ = ["RESERVE_BYTES", "SENT_HEADROOM", "Journal"]

log = logging.getLogger(__name__)


#: Size of a store's reserve (``Journal``). Measured (the reserve's own lines): a message of
#: #ubuntu takes ~260 bytes there (p99 ~470), a 4,096-character Russian reply ~7.5 KB (English
#: ~4.3 KB), a usage record ~320 bytes, a recall ~150. The 3 MiB intake may use hold ~12,000 chat
#: messages — far more than arrive between two commits (one every 50 ms, or every 2,000 rows).
RESERVE_BYTES = 4 * 2**20
#: The last part of the reserve, kept for replies, usage, recalls and deliveries (what was already
#: sent or billed; a delivery's line is ~80 bytes): intake stops short of it. 1 MiB: ~110 turns of
#: the longest reply with its usage and 8 recalls (~9 KB each), ~400 typical ones.
SENT_HEADROOM = 2**20


# ---------------------------------------------------------------- the reserve

_HEADER = "kith-reserve"
_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)


class Journal:
    """A store's reserve: a file of ``size`` bytes preallocated (``posix_fallocate``) on the
    database's disk, holding every queued row until a commit covers it.

    Layout, one JSON object per line: a header ``{"kith-reserve": 1, "g": G}``, then the rows of
    generation G — ``{"g": G, "s": seq, "record": "message"|"usage"|"recall"|"chat"|"delivery", …}`` (the
    fields of ``save_unsaved``'s dump) — and commit markers ``{"g": G, "done": seq}`` (rows up to
    ``seq`` are stored). When every queued row is committed a new generation starts at offset 0;
    what older generations left beyond its end is ignored, as is everything after the first line
    that does not parse (a torn write, or the zeros of the preallocation). Writes go into space
    allocated in advance, so a full disk does not refuse them (file systems that write in place:
    ext4, XFS, tmpfs; not copy-on-write ones such as btrfs or ZFS, where they may fail).

    ``headroom``: the last bytes, only for rows of what was already sent (``append(sent=True)``).
    Not thread-safe: the queue appends from the event loop; ``sync`` may run in a worker thread.
    Nothing is fsynced per row: a ``kill -9`` keeps what was written (the page cache), a power cut
    keeps what was synced (on a failed commit and at shutdown).
    """

    def __init__(self, path: Path, size: int = RESERVE_BYTES, headroom: int = SENT_HEADROOM) -> None:
        self.path = Path(path)
        self.size = size
        self.headroom = min(headroom, size // 2)
        self._fd: int | None = None
        self._gen = 0
        self._end = 0

    def recover(self) -> tuple[Batch, int]:
        """The rows the last run left uncommitted: ``(batch, lines that could not be read back)``.
        An empty batch when there is no reserve yet. Reads only; raises OSError when unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Batch(), 0
        batch, bad, done = Batch(), 0, 0
        rows: list[tuple[int, dict[str, Any]]] = []
        lines = data.split(b"\n")
        gen = _header_gen(lines[0])
        if gen is None:
            return batch, 0
        self._gen = gen
        for raw in lines[1:]:
            try:
                d = json.loads(raw.decode("utf-8", "surrogatepass"))
            except ValueError:
                break
            if not isinstance(d, dict) or d.get("g") != gen:
                break
            if "done" in d:
                done = max(done, int(d["done"]))
            elif "s" in d:
                rows.append((int(d["s"]), d))
        for seq, d in rows:
            if seq > done and not add_row(batch, d):
                bad += 1
        return batch, bad

    def start(self) -> None:
        """Open and preallocate the reserve, and start a new generation (what it held is dropped:
        recover it first). raises OSError (ENOSPC: the disk has no room for it)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if not self._gen:
                with contextlib.suppress(OSError):
                    self._gen = _header_gen(os.pread(self._fd, 64, 0).split(b"\n")[0]) or 0
        try:
            _preallocate(self._fd, self.size)
        except OSError:
            self.close()
            raise
        self.reset()

    def reset(self) -> None:
        """Start a new, empty generation. raises OSError."""
        assert self._fd is not None
        self._gen += 1
        head = json.dumps({_HEADER: 1, "g": self._gen}).encode() + b"\n"
        os.pwrite(self._fd, head, 0)
        self._end = len(head)

    def encode(self, kind: str, rows: list[Any], first_seq: int) -> bytes:
        """``rows`` of ``kind`` as the reserve's lines, numbered from ``first_seq`` (~10 µs a row)."""
        lines = []
        for i, r in enumerate(rows):
            d = row_json(kind, r)
            d["g"], d["s"] = self._gen, first_seq + i
            lines.append(_ENCODER.encode(d))
        lines.append("")
        return "\n".join(lines).encode("utf-8", "surrogatepass")  # a lone surrogate is kept as it came (the store drops it)

    def append(self, data: bytes, *, sent: bool) -> bool:
        """Write ``data`` (from ``encode``) after what the reserve holds. False when it does not fit
        (intake may use all but ``headroom``). raises OSError."""
        if self._fd is None:
            return False
        limit = self.size if sent else self.size - self.headroom
        if self._end + len(data) > limit:
            return False
        os.pwrite(self._fd, data, self._end)
        self._end += len(data)
        return True

    def mark_done(self, seq: int) -> None:
        """Rows up to ``seq`` are committed (the marker is skipped when it does not fit). raises OSError."""
        line = json.dumps({"g": self._gen, "done": seq}).encode() + b"\n"
        if self._fd is not None and self._end + len(line) <= self.size:
            os.pwrite(self._fd, line, self._end)
            self._end += len(line)

    @property
    def used(self) -> int:
        """Bytes of the current generation (header included)."""
        return self._end

    def sync(self) -> None:
        """fdatasync: what it holds survives a power cut. raises OSError."""
        if self._fd is not None:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _header_gen(line: bytes) -> int | None:
    try:
        d = json.loads(line)
    except ValueError:
        return None
    return d.get("g") if isinstance(d, dict) and d.get(_HEADER) == 1 and isinstance(d.get("g"), int) else None


def _preallocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of ``fd`` on its disk (no-op for what already is). raises OSError."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    have = os.fstat(fd).st_size  # a file system without fallocate: write the zeros
    chunk = b"\0" * 2**16
    while have < size:
        have += os.pwrite(fd, chunk[: size - have], have)
    os.fsync(fd)
