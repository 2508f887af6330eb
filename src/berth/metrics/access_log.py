"""nginx's compact metrics log: the line format, its parser, and an incremental tail that
survives rotation (a new inode at the path) and truncation (the file shrinks).

nginx writes one line per request (``log_format berth_metrics`` in the template), buffered
64 KiB and flushed every second, so Python reads whole chunks a second at a time and never
touches a request as it happens. A line is five tab-separated fields, all plain characters
nginx produced itself: the app id that the route's server block set (never the Host header),
the time the request ended, the status, the body bytes sent and the request time in seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# The nginx side of the format; parse_line is its inverse.
LOG_FORMAT = "$berth_app\\t$msec\\t$status\\t$body_bytes_sent\\t$request_time"
NO_APP = "-"  # what the default server sets: requests that matched no app
_READ_CHUNK = 1 << 20
# An old file (a new one appeared at the path) is read until this many reads in a row found
# nothing new: nginx's workers each flush their buffer into it when told to reopen, and a
# worker that could not open the new file goes on writing the old one.
_DRAIN_READS = 3


@dataclass(frozen=True, slots=True)
class Request:
    app_id: str
    ended_at: float  # unix seconds
    status: int
    body_bytes: int
    latency_us: int


def parse_line(line: bytes) -> Request | None:
    """One log line, or None when it is not one of ours (a request no app served, or a line
    cut short by a crash)."""
    fields = line.rstrip(b"\n").split(b"\t")
    if len(fields) != 5:
        return None
    app, msec, status, sent, took = fields
    if not app or app == NO_APP.encode() or not app.isalnum() or not app.isascii():
        return None
    try:
        return Request(
            app_id=app.decode("ascii"),
            ended_at=float(msec),
            status=int(status),
            body_bytes=int(sent),
            latency_us=_micros(took),
        )
    except ValueError:
        return None


def _micros(seconds: bytes) -> int:
    # "0.003" exactly, without float rounding: nginx always writes three decimals.
    whole, _, frac = seconds.partition(b".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"bad request time {seconds!r}")
    return int(whole) * 1_000_000 + int((frac + b"000000")[:6])


class LogTail:
    """Read the complete lines appended to ``path`` since the last call.

    Starts at the end of what is there (``from_start`` for a fresh file): a restarted server
    does not count again what its previous process counted. A partial last line waits for the
    rest of it.
    """

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = path
        self._from_start = from_start
        self._file: BinaryIO | None = None
        self._inode: tuple[int, int] | None = None
        self._partial = b""
        self._draining: list[tuple[BinaryIO, bytearray, int]] = []
        self._follow_path()  # where "the end" is: now, not at the first read

    @property
    def draining(self) -> bool:
        return bool(self._draining)

    def read_lines(self) -> list[bytes]:
        self._follow_path()
        lines = self._drain_old()
        if self._file is not None:
            self._check_truncated()
            data = _read_to_end(self._file)
            lines.extend(self._split(data))
        return lines

    def close(self) -> None:
        for handle, _, _ in self._draining:
            handle.close()
        self._draining.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _follow_path(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            # Renamed away and not reopened yet: the open file is still the live one. Not
            # there at all yet: nginx will create it, and all of it is new.
            if self._file is None:
                self._from_start = True
            return
        inode = (st.st_dev, st.st_ino)
        if self._file is not None and inode == self._inode:
            return
        handle = open(self.path, "rb")  # noqa: SIM115 - kept open across reads
        if self._file is None and not self._from_start:
            handle.seek(0, os.SEEK_END)
        elif self._file is not None:
            self._draining.append((self._file, bytearray(self._partial), _DRAIN_READS))
            self._partial = b""
        self._from_start = True  # every file after the first is read from its start
        opened = os.fstat(handle.fileno())
        self._file, self._inode = handle, (opened.st_dev, opened.st_ino)

    def _check_truncated(self) -> None:
        assert self._file is not None
        size = os.fstat(self._file.fileno()).st_size
        if size < self._file.tell():
            # Truncated in place (copytruncate): what follows starts at 0.
            self._file.seek(0)
            self._partial = b""

    def _split(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        data = self._partial + data
        end = data.rfind(b"\n")
        if end < 0:
            self._partial = data
            return []
        self._partial = data[end + 1 :]
        return data[: end + 1].splitlines()

    def _drain_old(self) -> list[bytes]:
        lines: list[bytes] = []
        still: list[tuple[BinaryIO, bytearray, int]] = []
        for handle, partial, reads_left in self._draining:
            data = bytes(partial) + _read_to_end(handle)
            end = data.rfind(b"\n")
            lines.extend(data[: end + 1].splitlines())
            rest = bytearray(data[end + 1 :])
            if len(data) > len(partial):
                still.append((handle, rest, _DRAIN_READS))
            elif reads_left > 1:
                still.append((handle, rest, reads_left - 1))
            else:
                handle.close()
        self._draining = still
        return lines


def _read_to_end(handle: BinaryIO) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = handle.read(_READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
