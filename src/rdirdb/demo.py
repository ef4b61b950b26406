"""``rdirdb demo``: index synthetic chunks, declare an incident, list what to rebuild.

The main job of an rdir, on the embedded engine: rawx indexers push chunk
records in batches; after a disk dies, a rebuild tool sets the incident date
on the volume and pages through the chunks that were on it before.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from rdirdb.progress import Progress
from rdirdb.rdir.store import Store
from rdirdb.tools.common import CommandError, Subparsers

BATCH = 100_000  # random records: the fastest batch size measured (benches/batch_size.py)
PAGE = 1_000
MARK = ".rdirdb-demo"  # in a directory the demo wrote: running the demo there again is safe


# (container_id, content_id, chunk_id, mtime, path, version): CHUNK_DTYPE_FIELDS' order
Chunk = tuple[str, str, str, int, str, int]


@dataclass
class Step:
    name: str
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def synthetic_chunks(count: int, seed: int, start_mtime: int) -> list[Chunk]:
    """OpenIO-shaped records: 64-hex container and chunk ids, 32-hex content ids.

    Objects of 3 chunks in containers of ~1,000 objects; mtimes over a day.
    """
    rnd = random.Random(seed)
    records: list[Chunk] = []
    containers = ["%064X" % rnd.getrandbits(256) for _ in range(max(1, count // 3000))]
    while len(records) < count:
        cid = rnd.choice(containers)
        content = "%032X" % rnd.getrandbits(128)
        mtime = start_mtime + rnd.randrange(86_400)
        path = f"obj-{rnd.getrandbits(40):010x}"
        for _ in range(min(3, count - len(records))):
            records.append((cid, content, "%064X" % rnd.getrandbits(256), mtime, path, 1))
    rnd.shuffle(records)  # indexers see chunks in no particular order
    return records


def run(count: int, directory: str, volumes: int, seed: int = 42, out: Callable[[str], None] = print) -> list[Step]:
    steps: list[Step] = []
    start_mtime = 1_700_000_000
    t0 = time.monotonic()
    records = synthetic_chunks(count, seed, start_mtime)
    steps.append(Step("generate", count, time.monotonic() - t0))

    with Store(directory) as store:
        vols = [store.volume(f"127.0.0.1:{6200 + i}", create=True) for i in range(volumes)]
        t0 = time.monotonic()
        with Progress(count, "indexing") as bar:
            for n, vol in enumerate(vols):  # each volume every volumes-th chunk: the same share
                share = records[n::volumes]
                for start in range(0, len(share), BATCH):
                    batch = share[start : start + BATCH]
                    vol.chunks.put_batch(batch)
                    bar.update(len(batch))
        steps.append(Step("index (batch push)", count, time.monotonic() - t0))

        broken = vols[0]
        incident = start_mtime + 43_200
        broken.admin_set("incident_date", str(incident))
        broken.lock("rdirdb demo rebuilder")
        out(f"volume {broken.volume_id}: incident at {incident}, locked for the rebuild")

        t0 = time.monotonic()
        listed = pages = 0
        marker = None
        with Progress(None, "rebuild list", unit="chunks") as bar:
            while True:
                page, truncated, marker = broken.chunks.fetch(marker=marker, limit=PAGE, incident=incident)
                pages += 1
                listed += len(page)
                bar.update(len(page))
                if not truncated:
                    break
        steps.append(Step(f"rebuild listing ({pages} pages)", listed, time.monotonic() - t0))

        t0 = time.monotonic()
        total = to_rebuild = 0
        containers = 0
        marker = None
        while True:
            t, r, per_container, truncated, marker = broken.chunks.status(
                marker=marker, limit=10_000, incident=incident
            )
            total += t
            to_rebuild += r
            containers += len(per_container)
            if not truncated:
                break
        steps.append(Step("status", total, time.monotonic() - t0))
        broken.unlock()

        out(f"status of {broken.volume_id}: chunk total={total:,} to_rebuild={to_rebuild:,} "
            f"(container pages: {containers:,})")
        if listed != to_rebuild:
            raise CommandError(f"inconsistent: listed {listed} chunks to rebuild, status says {to_rebuild}")
        for vol in vols:
            out(f"  volume {vol.volume_id}: {vol.chunks.count():,} chunks")

    out("")
    out(f"{'step':<32}{'records':>12}{'seconds':>10}{'records/s':>14}")
    for step in steps:
        out(f"{step.name:<32}{step.records:>12,}{step.seconds:>10.2f}{step.rate:>14,.0f}")
    return steps


def add_parser(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("demo", help="index synthetic chunks and list a broken volume's chunks")
    p.add_argument("--count", type=int, default=1_000_000, help="chunks to index (default 1,000,000)")
    p.add_argument("--volumes", type=int, default=4, help="rawx volumes (default 4)")
    p.add_argument("--dir", help="store directory: new, empty, or one a demo wrote "
                   "(default: a temporary directory, removed after)")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(handler=_main, parser=p)


def claim_directory(path: str) -> None:
    """Refuse a directory that holds anything but a demo's store: the demo writes synthetic
    chunks, sets an incident and locks a volume, which must never happen to a real store."""
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, MARK)):
        raise CommandError(
            f"{path} is not empty and is not a demo's store (it has no {MARK} file): the demo writes "
            "synthetic chunks, sets an incident and locks a volume; give a new or empty directory"
        )
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, MARK), "a").close()


def _main(args: argparse.Namespace) -> int:
    if args.count < 1 or args.volumes < 1:
        args.parser.error("--count and --volumes must be positive")
    if args.dir:
        claim_directory(args.dir)
        run(args.count, args.dir, args.volumes, args.seed)
        return 0
    with tempfile.TemporaryDirectory(prefix="rdirdb-demo-") as tmp:
        print(f"store: {tmp} (temporary)")
        run(args.count, tmp, args.volumes, args.seed)
    return 0
