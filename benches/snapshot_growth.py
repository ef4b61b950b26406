"""How much a volume's file grows while a long read transaction (an export) is open.

A volume holds RECORDS chunk records; a writer replaces STEP of them per step
(adds STEP new records, then deletes STEP old ones, BATCH records per
transaction: 1 is a server's single pushes), so the live data keeps its size. The same STEPS steps run twice on fresh stores:
without a reader, then while another process holds a snapshot
(``Volume.snapshot()``, what ``rdirdb export`` holds per volume). STEPS more
steps then show whether the writer reuses the pages again: after the snapshot
closed, and after its process was killed (SIGKILL leaves its reader slot
behind until a process opens the volume).

    python benches/snapshot_growth.py [--records N] [--step N] [--steps N] [--batch N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile

from rdirdb.rdir.store import Store

VOLUME = "vol"


def records(start: int, count: int) -> list[tuple]:
    return [(f"{i % 997:064X}", f"{i:032X}", f"{i:064X}", 1_700_000_000 + i, f"obj/{i}", 1)
            for i in range(start, start + count)]


def hold_snapshot(path: str, ready, release) -> None:
    with Store(path, readonly=True) as store, store.volume(VOLUME).snapshot():
        ready.set()
        release.wait(600)


def file_mib(path: str) -> float:
    return os.path.getsize(os.path.join(path, "rawx", VOLUME, "data.mdb")) / 2**20


def pages_mib(store: Store) -> float:
    env = store.volume(VOLUME).env
    stats = [env.stat(db) for db in ("chunk_bin", "chunk_text", "admin")]
    used = sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
    return used * stats[0]["psize"] / 2**20


def run(args: argparse.Namespace, reader: str) -> list[tuple[str, float, float]]:
    """``reader``: "none", "closed" (the snapshot ends normally) or "killed" (SIGKILL)."""
    path = tempfile.mkdtemp(prefix="snapshot-growth-")
    rows = []
    oldest = 0

    def churn(phase: str) -> None:
        nonlocal oldest
        for _ in range(args.steps):
            for start in range(oldest, oldest + args.step, args.batch):
                chunks.put_batch(records(start + args.records, args.batch))
            for start in range(oldest, oldest + args.step, args.batch):
                chunks.delete_batch([(r[0], r[2]) for r in records(start, args.batch)])
            oldest += args.step
        rows.append((phase, file_mib(path), pages_mib(store)))

    with Store(path, sync=False) as store:
        chunks = store.volume(VOLUME, create=True).chunks
        for start in range(0, args.records, args.step):
            chunks.put_batch(records(start, min(args.step, args.records - start)))
        rows.append(("loaded", file_mib(path), pages_mib(store)))
        if reader == "none":
            churn("churned")
            return rows
        ctx = multiprocessing.get_context("spawn")
        ready, release = ctx.Event(), ctx.Event()
        holder = ctx.Process(target=hold_snapshot, args=(path, ready, release))
        holder.start()
        assert ready.wait(60)
        churn("churned while the snapshot is open")
        if reader == "closed":
            release.set()
            holder.join(60)
            churn("churned after it closed")
        else:
            holder.kill()
            holder.join(60)
            churn("churned after its holder was killed")
            # Opening the volume anywhere clears dead readers' slots (mdb_reader_check).
            subprocess.run([sys.executable, "-m", "rdirdb", "stats", path], check=True, capture_output=True)
            churn("churned after 'rdirdb stats' opened it")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--step", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=0, help="records per transaction (default: --step)")
    args = parser.parse_args()
    args.batch = args.batch or args.step
    if args.step % args.batch:
        parser.error("--step must be a multiple of --batch")
    rewritten = args.step * args.steps
    print(f"{args.records:,} records; {args.steps} steps each add and delete {args.step:,} in transactions of "
          f"{args.batch:,} ({rewritten:,} records rewritten, {rewritten / args.records:.2f}x the volume, "
          f"{2 * rewritten // args.batch:,} commits)")
    print(f"{'':46} {'file MiB':>9} {'pages in use MiB':>17}")
    for reader in ("none", "closed", "killed"):
        print({"none": "no reader", "closed": "a snapshot, closed", "killed": "a snapshot, killed"}[reader])
        for phase, size, used in run(args, reader):
            print(f"  {phase:44} {size:9.1f} {used:17.1f}")


if __name__ == "__main__":
    main()
