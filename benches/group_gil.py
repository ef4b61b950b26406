"""A group's write transaction while another thread runs Python: the GIL's cost.

The server's group commit writes the batches of many requests in one LMDB
write transaction, in a thread of its own, while the worker's event loop keeps
running Python. Every time the write gives the GIL back and takes it again, it
waits for the event loop to let it go, and it waits holding LMDB's write lock,
which the other workers wait for. This script times ``index.apply_group`` of
``--group`` single-record batches on a durable volume (each group committed and
its data pages flushed, as the server's commits are), first with no other
thread, then with a thread that runs Python and lets the GIL go between short
stretches (as an event loop does at each system call), and prints the medians
and their ratio, measured in one run.

    python benches/group_gil.py [--groups 300] [--group 12]
"""

from __future__ import annotations

import argparse
import random
import select
import statistics
import tempfile
import threading
import time

from rdirdb.rdir.store import Store


def record(i: int) -> dict:
    return {"container_id": "%064X" % random.getrandbits(256), "content_id": "%032X" % random.getrandbits(128),
            "chunk_id": "%064X" % random.getrandbits(256), "mtime": 1700000000 + i, "path": f"obj-{i}",
            "version": 1}


def busy_loop(stop: threading.Event) -> None:
    """Python work in short stretches, the GIL let go between them."""
    total = 0
    while not stop.is_set():
        for i in range(300):
            total += i
        select.select([], [], [], 0)


def time_groups(store: Store, groups: int, size: int) -> float:
    """Median seconds of ``apply_group`` of ``size`` one-record batches."""
    times = []
    for g in range(groups):
        batches = [store.prepare_write("bench", "rawx", [record(g * size + i)])[1] for i in range(size)]
        volume = store.volume("bench")
        started = time.perf_counter()
        volume.index.apply_group(batches, sync_meta=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=300, help="groups timed in each run")
    parser.add_argument("--group", type=int, default=12, help="single-record batches per group")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rdirdb-bench-") as path, Store(path) as store:
        store.write("bench", "rawx", [record(-1)], create=True)
        idle = time_groups(store, args.groups, args.group)
        stop = threading.Event()
        thread = threading.Thread(target=busy_loop, args=(stop,), daemon=True)
        thread.start()
        try:
            busy = time_groups(store, args.groups, args.group)
        finally:
            stop.set()
            thread.join()
    print(f"apply_group of {args.group} one-record batches, durable volume, median of {args.groups} groups:")
    print(f"  alone:                 {idle * 1e6:8.0f} us")
    print(f"  beside a Python thread: {busy * 1e6:7.0f} us")
    print(f"  ratio busy / alone:    {busy / idle:8.2f}")
    return {"idle": idle, "busy": busy}


if __name__ == "__main__":
    main()
