"""Throughput and memory of nanny_io.store: ``python benchmarks/bench_store.py``.

Prints figures only; nothing is asserted. Lines are 100 bytes, appended in 10 000-line
batches of (data, flags) pieces, and through the capture path itself (``StreamPipeline``:
line assembly and a block per read of about 1 MiB, not aligned to lines) with its CPU time
per MB.
"""

from __future__ import annotations

import gc
import tempfile
import time
import tracemalloc

import psutil

from nanny_io.capture import StreamPipeline
from nanny_io.store import LogStore, Spill, pack_entries, read_spill
from nanny_io_proto.logrecords import pack_records
from nanny_io_proto.streams import Stream

LINE = b"x" * 99 + b"\n"
BATCH = 10_000


def batch(i: int) -> list[tuple[bytes, int]]:
    # distinct bytes objects, like LineAssembler's slices of a read
    return [(b"%08d" % (i * BATCH + k) + LINE[8:], 0) for k in range(BATCH)]


def bench_append(spill_dir: str | None, total_lines: int) -> None:
    spill = Spill(spill_dir, epoch="bench") if spill_dir else None
    store = LogStore(epoch="bench", spill=spill)
    batches = [batch(i) for i in range(8)]
    n = 0
    t0 = time.perf_counter()
    i = 0
    while n < total_lines:
        store.append(Stream.STDOUT, 1, time.time_ns(), batches[i % 8])
        n += BATCH
        i += 1
    dt = time.perf_counter() - t0
    label = "with spill   " if spill else "memory only  "
    print(
        f"append {label}: {n / dt / 1e6:6.2f} M lines/s  {n * len(LINE) / dt / 1e6:7.1f} MB/s"
        f"  ({n} lines in {dt:.2f} s)"
    )
    if spill:
        spill.close()


def bench_capture_path(spill_dir: str | None, line: int, total_mib: int) -> None:
    """Reads of ``line``-byte lines through StreamPipeline into a full 64 MiB ring."""
    spill = Spill(spill_dir, epoch="bench") if spill_dir else None
    store = LogStore(epoch="bench", spill=spill)
    pipeline = StreamPipeline(Stream.LOG, store, incarnation=lambda: 1)
    size = (1 << 20) - 12345  # reads end inside a line
    data = (b"y" * (line - 1) + b"\n") * (3 * size // line + 1)
    reads = [data[k * size : (k + 1) * size] for k in range(3)]
    for k in range(96):  # fill the ring: every read from now on evicts
        pipeline.feed(Stream.LOG, reads[k % 3])
    n = total_mib * (1 << 20) // size
    c0, t0 = time.process_time(), time.perf_counter()
    for k in range(n):
        pipeline.feed(Stream.LOG, reads[k % 3])
    cpu, dt = time.process_time() - c0, time.perf_counter() - t0
    label = "with spill   " if spill else "memory only  "
    print(
        f"capture path {label} {line:5d} B lines: {n * size / line / dt / 1e6:6.2f} M lines/s"
        f"  {cpu * 1e3 / (n * size / 1e6):5.2f} ms CPU per MB"
    )
    if spill:
        spill.close()


def bench_read() -> None:
    store = LogStore(epoch="bench", max_bytes=256 << 20)
    for i in range(50):
        store.append(Stream.STDOUT if i % 2 else Stream.STDERR, 1, time.time_ns(), batch(i))
    n = store.count
    t0 = time.perf_counter()
    entries = store.entries(1)
    t1 = time.perf_counter()
    recs = store.records(1)
    t2 = time.perf_counter()
    body = pack_entries(entries)
    t3 = time.perf_counter()
    body2 = pack_records(recs)
    t4 = time.perf_counter()
    filt = store.records(1, streams=frozenset({Stream.STDERR}))
    t5 = time.perf_counter()
    assert body == body2 and len(filt) == n // 2
    print(f"entries()          : {n / (t1 - t0) / 1e6:8.1f} M records/s ({n} records)")
    print(f"records()          : {n / (t2 - t1) / 1e6:8.2f} M records/s")
    print(f"records(streams=1) : {n / (t5 - t4) / 1e6:8.2f} M records/s scanned")
    print(f"pack_entries()     : {n / (t3 - t2) / 1e6:8.2f} M records/s")
    print(f"pack_records()     : {n / (t4 - t3) / 1e6:8.2f} M records/s")


def bench_spill_read(spill_dir: str) -> None:
    t0 = time.perf_counter()
    n = sum(1 for _ in read_spill(spill_dir))
    dt = time.perf_counter() - t0
    print(f"read_spill()       : {n / dt / 1e6:8.2f} M records/s ({n} records, 64 MiB bound)")


def bench_memory(total: int, tiny: bool) -> None:
    """Resident memory growth (psutil RSS) while filling a 64 MiB store far beyond its size."""
    gc.collect()
    proc = psutil.Process()
    base = proc.memory_info().rss
    store = LogStore(epoch="bench")  # 64 MiB
    written = 0
    t = time.time_ns()
    t0 = time.perf_counter()
    if tiny:
        # the worst case: single-byte records, one per call, each with its own time
        while written < total:
            for k in range(BATCH):
                store.append_one(Stream.STDOUT, 1, t + written + k, b"\n")
            written += BATCH
    else:
        i = 0
        while written < total:
            store.append(Stream.STDOUT, 1, t + i, batch(i))  # fresh bytes objects
            written += BATCH * len(LINE)
            i += 1
    dt = time.perf_counter() - t0
    gc.collect()
    grown = proc.memory_info().rss - base
    what = f"{written >> 20} MiB of 100-byte lines" if not tiny else f"{written} 1-byte records"
    print(
        f"RSS growth after {what}: {grown / 2**20:6.1f} MiB, bytes_used "
        f"{store.bytes_used / 2**20:.1f} MiB, {store.count} records held ({dt:.1f} s)"
    )


def bench_tracemalloc_tiny(n: int) -> None:
    """Python-object memory (tracemalloc) of a 64 MiB store of 1-byte records."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store = LogStore(epoch="bench")
    t = time.time_ns()
    for k in range(n):
        store.append_one(Stream.STDOUT, 1, t + k, b"\n")
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"tracemalloc, {n} 1-byte records: {(cur - base) / 2**20:.1f} MiB "
        f"(peak {(peak - base) / 2**20:.1f}), bytes_used {store.bytes_used / 2**20:.1f} MiB"
    )


def main() -> None:
    bench_append(None, 2_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        bench_append(tmp + "/spill", 2_000_000)
        bench_spill_read(tmp + "/spill")
    for line in (100, 1024):
        bench_capture_path(None, line, 128)
        with tempfile.TemporaryDirectory() as tmp:
            bench_capture_path(tmp + "/spill", line, 128)
    bench_read()
    bench_memory(1 << 30, tiny=False)
    bench_memory(2_000_000, tiny=True)
    bench_tracemalloc_tiny(1_000_000)


if __name__ == "__main__":
    main()
