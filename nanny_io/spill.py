"""The spill: rotating segment files that keep a nanny's log readable after it exits.

``nanny-io tail`` reads a kernel's history post mortem from here. A spill directory holds
segment files ``seg-<index:08d>-<first_seq:020d>.nlog`` (the index orders them, the first
seq names where each starts); the bytes inside are the segment format of
``nanny_io_proto.spillformat``: a header (magic, log format version, epoch), then one chunk
per store append, a head (length and checksums) and a body in exactly the log channel's
binary layout.

This module does the files: creating, rotating and bounding them (:class:`Spill`, written
by the store), and reading a directory back (:func:`read_spill`), where everything that is
not whole is skipped with one warning and never raised.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from nanny_io_proto.logrecords import (
    RECORD_HEADER,
    Entry,
    LogRecord,
    check_epoch,
    pack_entries,
)
from nanny_io_proto.spillformat import (
    CHUNK_HEAD,
    END,
    NEED_DATA,
    SEGMENT_HEADER,
    SPILL_MAGIC,
    BadEpoch,
    CorruptChunk,
    DamagedChunk,
    NotASegment,
    SegmentDecoder,
    SegmentHeader,
    TruncatedHeader,
    chunk_head,
    encode_segment_header,
    tail_of_body,
)
from nanny_io_proto.version import LOG_FORMAT_VERSION

from .limits import DEFAULT_SEGMENT_BYTES, DEFAULT_SPILL_BYTES

__all__ = ["Spill", "incomplete_epochs", "read_spill"]

logger = logging.getLogger("nanny_io")

_COUNT_SIZE = 4  # the u32 record count a body starts with
#: Chunks of more parts than this are joined before they are written.
_WRITEV_PARTS = 8
#: The most buffers one writev takes (POSIX guarantees 16; Linux takes 1024).
_IOV_MAX = max(16, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 16
_SEG_NAME = re.compile(r"seg-(\d{8,})-(\d{20})\.nlog")


class Spill:
    """Rotating segment files that keep the log readable after the nanny exits.

    Every chunk is handed to the OS with os.write before :meth:`write_parts` returns, so a
    SIGKILL of the nanny loses nothing already acknowledged (no fsync: a machine crash may).
    Any OSError turns the spill off for good, with one warning: the store goes on in memory.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        epoch: str,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_total_bytes: int = DEFAULT_SPILL_BYTES,
    ) -> None:
        if segment_bytes < 1 or max_total_bytes < segment_bytes:
            raise ValueError(
                f"need 0 < segment_bytes <= max_total_bytes, got {segment_bytes!r}, "
                f"{max_total_bytes!r}"
            )
        self.directory = Path(directory)
        self.epoch = check_epoch(epoch)
        self.segment_bytes = segment_bytes
        self.max_total_bytes = max_total_bytes
        self.error: str | None = None
        self.bytes_written = 0
        self._fd = -1  # -1: no segment open yet, -2: closed for good
        self._path = self.directory  # the open segment's path
        self._seg_size = 0  # bytes in the open segment
        self._next_index = 1
        self._closed: deque[tuple[Path, int]] = deque()  # finished segments, oldest first
        self._closed_bytes = 0
        self._header = encode_segment_header(epoch)
        try:
            self._prepare()
        except OSError as exc:
            self._fail("cannot use", exc)

    @property
    def active(self) -> bool:
        """False once the spill has failed or was closed: the store is memory-only."""
        return self.error is None and self._fd != -2

    def _prepare(self) -> None:
        """Create the directory (0700) and account for segments of earlier epochs."""
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.directory.mkdir(mode=0o700)
        except FileExistsError:
            if not self.directory.is_dir():
                raise
        os.chmod(self.directory, 0o700)
        for index, _, path in _segments(self.directory):
            size = path.stat().st_size
            self._closed.append((path, size))
            self._closed_bytes += size
            self._next_index = index + 1

    def write_parts(self, first_seq: int, parts: list[bytes]) -> bool:
        """Write one body (the log channel layout, given as parts to join) as one chunk.

        ``first_seq`` is the body's first seq (it names a new segment). Returns False when
        the spill is off. Never raises OSError.
        """
        if not self.active:
            return False
        # The head and the parts go to the kernel as they are (os.writev): the body, often
        # a whole read's bytes, is not copied into a joined chunk first. Many small parts (a
        # record each) are joined: one copy costs less than a long list of buffers.
        if len(parts) > _WRITEV_PARTS:
            parts = [b"".join(parts)]
        size = CHUNK_HEAD.size + sum(map(len, parts))
        if len(self._header) + size > self.max_total_bytes:
            # One append larger than the whole spill: keep its newest records that fit.
            room = self.max_total_bytes - len(self._header) - CHUNK_HEAD.size
            body = tail_of_body(b"".join(parts), room)
            if body is None:
                return True  # not even its last record fits: the spill keeps what it had
            first_seq = RECORD_HEADER.unpack_from(body, _COUNT_SIZE)[0]
            parts = [body]
            size = CHUNK_HEAD.size + len(body)
        # The body's checksum, computed once: over what is written.
        chunk = [chunk_head(parts), *parts]
        try:
            if self._fd < 0 or (self._seg_size and self._seg_size + size > self.segment_bytes):
                self._rotate(first_seq, size)
            _write_all(self._fd, chunk)
        except OSError as exc:
            self._fail("cannot write to", exc)
            self._mark_incomplete(first_seq, exc)
            return False
        self._seg_size += size
        self.bytes_written += size
        return True

    def write_entries(self, entries: Sequence[Entry]) -> bool:
        """Write raw store entries (one chunk); see :meth:`write_parts`."""
        if not entries:
            return self.active
        return self.write_parts(entries[0][0], [pack_entries(entries)])

    def _rotate(self, first_seq: int, incoming: int = 0) -> None:
        """Close the open segment, drop the oldest ones over the bound, open a new one.

        The new segment will hold up to ``segment_bytes``, or more when the chunk about to
        be written (``incoming`` bytes) is larger than a segment: room is made for that,
        so one oversized append cannot take the spill over its bound.
        """
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
            self._closed.append((self._path, self._seg_size))
            self._closed_bytes += self._seg_size
        new_segment = max(self.segment_bytes, len(self._header) + incoming)
        while self._closed and self._closed_bytes + new_segment > self.max_total_bytes:
            path, size = self._closed.popleft()
            self._closed_bytes -= size
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):  # another writer in the same directory: take the next index
            self._path = self.directory / f"seg-{self._next_index:08d}-{first_seq:020d}.nlog"
            self._next_index += 1
            try:
                self._fd = os.open(self._path, flags, 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise OSError(errno.EEXIST, "no free segment name", str(self.directory))
        self._seg_size = 0
        _write_all(self._fd, [self._header])
        self._seg_size = len(self._header)
        self.bytes_written += len(self._header)

    def _fail(self, what: str, exc: OSError) -> None:
        self.error = f"{what} {str(self.directory)!r}: {exc.strerror or exc}"
        logger.warning(
            "log spill off, %s; history will not survive the nanny (memory only)", self.error
        )
        self._close_fd()

    def _mark_incomplete(self, first_lost: int, exc: OSError) -> None:
        """Leave a note for the post-mortem reader that the history on disk is cut short
        (at the latest before ``first_lost``: the complete records of a chunk cut by the
        disk filling up stay readable). An empty file: creating one needs an inode, not a
        data block, so it usually works on a full disk (tmpfs, ext4's reserved blocks)."""
        reason = errno.errorcode.get(exc.errno or 0, "EIO")
        name = f"incomplete-{first_lost:020d}-{reason}-{self.epoch}"
        try:
            os.close(os.open(self.directory / name, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as again:  # the one warning about the spill was given already
            logger.debug(
                "cannot mark the log history in %r as incomplete: %s",
                str(self.directory),
                again.strerror or again,
            )

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close the open segment; later writes are ignored (the files stay)."""
        self._close_fd()
        self._fd = -2

    def __enter__(self) -> Spill:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write every byte of ``parts``, in order, with as few ``writev`` calls as the kernel
    allows (a regular file takes them whole unless the disk is full or a signal interrupts)."""
    views = [memoryview(part) for part in parts if part]
    first = 0  # views[first:] are still to be written
    while first < len(views):
        n = os.writev(fd, views[first : first + _IOV_MAX])
        while first < len(views) and n >= len(views[first]):
            n -= len(views[first])
            first += 1
        if n:
            views[first] = views[first][n:]


def _segments(directory: Path) -> list[tuple[int, int, Path]]:
    """(index, first_seq, path) of the segment files in ``directory``, in write order."""
    found = []
    for entry in os.scandir(directory):
        m = _SEG_NAME.fullmatch(entry.name)
        if m:
            found.append((int(m[1]), int(m[2]), Path(entry.path)))
    found.sort()
    return found


# -- post-mortem reading -----------------------------------------------------------------------

_INCOMPLETE_NAME = re.compile(r"incomplete-(\d{20})-([A-Z0-9]+)-(.+)")


def incomplete_epochs(directory: str | os.PathLike[str]) -> dict[str, tuple[int, str]]:
    """Epochs whose history on disk was cut short (the spill could not write, e.g. a full
    disk): epoch -> (the first seq of the chunk that failed, the error's name such as
    ``ENOSPC``). Complete records of that chunk may still be on disk."""
    found: dict[str, tuple[int, str]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            m = _INCOMPLETE_NAME.fullmatch(entry.name)
            if m:
                found[m[3]] = (int(m[1]), m[2])
    return found


def read_spill(directory: str | os.PathLike[str]) -> Iterator[tuple[str, LogRecord]]:
    """Every record in a spill directory as (epoch, record), in write order.

    Within an epoch seqs increase; a later epoch (a new nanny) starts again from 1. A
    truncated last chunk (the nanny was killed mid-write) yields its complete records and
    ends that file; an unreadable or corrupt file is skipped with a warning. A missing
    directory yields nothing.
    """
    try:
        segments = _segments(Path(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    last_seq: dict[str, int] = {}
    for _, _, path in segments:
        try:
            buf = path.read_bytes()
        except OSError as exc:
            logger.warning("skipping spill segment %r: %s", str(path), exc.strerror or exc)
            continue
        yield from _read_segment(path, buf, last_seq)


def _read_segment(
    path: Path, buf: bytes, last_seq: dict[str, int]
) -> Iterator[tuple[str, LogRecord]]:
    """The records of one segment file; ``last_seq`` (per epoch, across files) rejects a
    segment that goes back in seq, which only a stray or copied file can do."""
    decoder = SegmentDecoder()
    decoder.receive_data(buf)
    decoder.receive_data(b"")  # the whole file is there
    epoch = ""
    try:
        while (event := decoder.next_event()) is not END:
            if isinstance(event, SegmentHeader):
                epoch = event.epoch
                continue
            assert event is not NEED_DATA  # the end of the file was given
            if isinstance(event, DamagedChunk):  # the next chunk is still readable
                logger.warning(
                    "spill segment %r: %d bytes of records at byte %d fail their checksum "
                    "(corrupted on disk); skipping them",
                    str(path),
                    event.length,
                    event.offset,
                )
                continue
            records = event.records
            if records:
                if records[0].seq <= last_seq.get(epoch, 0):
                    logger.warning(
                        "spill segment %r goes back to seq %d: skipping the rest",
                        str(path),
                        records[0].seq,
                    )
                    return
                last_seq[epoch] = records[-1].seq
            for rec in records:
                yield epoch, rec
    except TruncatedHeader as exc:
        # Killed before its header was written: say so only when not even the fixed part
        # made it (a cut inside the epoch is the same accident, left silent as it always was).
        if exc.length < SEGMENT_HEADER.size:
            logger.warning("skipping spill segment %r: truncated header", str(path))
    except NotASegment as exc:
        if exc.magic == SPILL_MAGIC:
            logger.warning(
                "skipping spill segment %r: log format %r, this nanny-io reads format %r",
                str(path),
                exc.version,
                LOG_FORMAT_VERSION,
            )
        else:
            logger.warning(
                "skipping %r: not a nanny-io spill segment (magic %r, version %r)",
                str(path),
                exc.magic,
                exc.version,
            )
    except BadEpoch:
        logger.warning("skipping spill segment %r: bad epoch", str(path))
    except CorruptChunk as exc:
        logger.warning(
            "spill segment %r is corrupt at byte %d (%s): skipping the rest",
            str(path),
            exc.offset,
            exc.reason,
        )
