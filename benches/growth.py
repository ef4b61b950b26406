"""A volume growing to 10 million chunks: rdirdb next to a plain LMDB C loop, in one run.

    python benches/growth.py [--size 10000000 | --quick] [--reps 1] [--sync]
                             [--batch 10000] [--only NAMES] [--json FILE] [--plot PNG]

What a rebuild tool or an indexer crawling a new disk does: one embedded
volume, chunks of random ids spread over 10,000 containers, pushed with
``RdirClient.chunk_push_batch`` in batches of ``--batch`` records (``db_sync``
off unless ``--sync``). For every tenth of ``--size`` it prints the insert rate
of that tenth (records/s) and its CPU time per record, then, on the full
volume: a full ``chunk_fetch``, 1,000-record listings of single containers,
bytes on disk per chunk and the peak RSS.

Next to it, in the same run, ``lmdb_loop.c`` (in this directory, compiled here
with the system gcc against liblmdb) writes the same key shape (64 bytes: a
container id of 32 bytes, then 32 random bytes) with values of rdirdb's mean
encoded size, each batch sorted, plain and with MDB_WRITEMAP.

Each contender is a process of its own (a clean peak RSS), and they take
turns: every one writes its first tenth, then every one its second, and so on
(the order rotating), so that a shared machine's load weighs on all of them
alike and the ratios of one run compare like with like. With ``--reps`` > 1
every figure is the median of the repetitions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONTAINERS = 10_000
LISTINGS = 1_000  # single-container listings measured on the full volume
LISTING_LIMIT = 1_000
STEPS = 10  # insert rates are reported per tenth of the size
SEED = 42
VOLUME = "127.0.0.1:6201"
MTIME = 1_700_000_000
QUICK_SIZE = 200_000


# -- records ---------------------------------------------------------------------


def container_ids() -> list[str]:
    rng = random.Random(SEED)
    return ["%064X" % rng.getrandbits(256) for _ in range(CONTAINERS)]


def batches(size: int, batch: int):
    """``size`` OpenIO-shaped chunk records (dicts, as OpenIO's tools push them),
    ``batch`` at a time: random chunk ids over :data:`CONTAINERS` containers,
    two chunks per content."""
    rng = random.Random(SEED + 1)
    containers = container_ids()
    for start in range(0, size, batch):
        n = min(batch, size - start)
        cids = rng.choices(containers, k=n)
        chunks = rng.randbytes(32 * n).hex().upper()
        contents = rng.randbytes(16 * n).hex().upper()
        yield [
            {
                "container_id": cids[i],
                "content_id": contents[32 * (i // 2):32 * (i // 2) + 32],
                "chunk_id": chunks[64 * i:64 * i + 64],
                "mtime": MTIME + rng.randrange(86_400 * 365),
                "path": f"obj-{start + i // 2:08d}",
                "version": 1,
            }
            for i in range(n)
        ]


def mean_value_size() -> int:
    """The mean size of rdirdb's encoded value of these records (for the C loop)."""
    from rdirdb import _rdir

    sample = next(batches(10_000, 10_000))
    sizes = [len(_rdir.encode_chunk_value(r["content_id"], r["mtime"], r["path"], r["version"]))
             for r in sample]
    return round(statistics.mean(sizes))


def disk_bytes(directory: str) -> tuple[int, int]:
    """(allocated, apparent) bytes of the ``data.mdb`` under ``directory``."""
    for root, _, files in os.walk(directory):
        if "data.mdb" in files:
            st = os.stat(os.path.join(root, "data.mdb"))
            return st.st_blocks * 512, st.st_size
    raise FileNotFoundError(f"no data.mdb under {directory}")


def usage() -> tuple[float, float, int]:
    """(user seconds, system seconds, peak RSS bytes) of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, ru.ru_maxrss * 1024


# -- the rdirdb contender (a process of its own) -------------------------------------


def wait_turn() -> None:
    """Wait for the driver's go (a line on stdin) before the next part of the work."""
    sys.stdin.readline()


def rdirdb_worker(directory: str, size: int, batch: int, sync: bool, writemap: bool) -> None:
    """What ``lmdb_loop.c`` does, through ``RdirClient``, then the scans at the end."""
    from rdirdb import RdirClient

    step = max(1, size // STEPS)
    with RdirClient({"db_path": directory, "db_sync": sync, "db_writemap": writemap}) as client:
        client.create(VOLUME)
        print(json.dumps({"ready": True}), flush=True)
        seconds = user = system = 0.0
        written, next_report, waiting = 0, step, True
        for records in batches(size, batch):
            if waiting:
                wait_turn()
                waiting = False
            user0, system0, _ = usage()
            t0 = time.perf_counter()
            client.chunk_push_batch(VOLUME, records)
            seconds += time.perf_counter() - t0
            user1, system1, _ = usage()
            user, system = user + user1 - user0, system + system1 - system0
            written += len(records)
            if written >= next_report or written == size:
                print(json.dumps({"records": written, "seconds": seconds, "user": user,
                                  "system": system}), flush=True)
                next_report += step
                waiting = True
        insert_rss = usage()[2]

        wait_turn()
        t0 = time.perf_counter()
        fetched = sum(1 for _ in client.chunk_fetch(VOLUME))
        fetch_seconds = time.perf_counter() - t0
        if fetched != size:
            raise SystemExit(f"full fetch returned {fetched:,} records, {size:,} were pushed")
        picked = random.Random(SEED + 2).sample(container_ids(), min(LISTINGS, CONTAINERS))
        listed = 0
        t0 = time.perf_counter()
        for cid in picked:
            page = client.chunk_fetch(VOLUME, limit=LISTING_LIMIT, container_id=cid)
            listed += sum(1 for _ in itertools.islice(page, LISTING_LIMIT))
        listing_seconds = time.perf_counter() - t0
    allocated, apparent = disk_bytes(directory)
    print(json.dumps({
        "done": size, "fetch_seconds": fetch_seconds, "listings": len(picked), "listed": listed,
        "listing_seconds": listing_seconds, "disk_bytes": allocated, "file_bytes": apparent,
        "insert_max_rss": insert_rss, "max_rss": usage()[2],
    }), flush=True)


# -- contenders, in turns ------------------------------------------------------------


def build_c_loop(workdir: str) -> str:
    """Compile lmdb_loop.c with the system gcc; returns the executable's path."""
    exe = os.path.join(workdir, "lmdb_loop")
    cmd = ["gcc", "-O2", "-o", exe, os.path.join(HERE, "lmdb_loop.c"), "-llmdb"]
    if os.environ.get("LMDB_INCLUDEDIR"):
        cmd[1:1] = ["-I", os.environ["LMDB_INCLUDEDIR"]]
    if os.environ.get("LMDB_LIBDIR"):
        cmd[1:1] = ["-L", os.environ["LMDB_LIBDIR"], f"-Wl,-rpath,{os.environ['LMDB_LIBDIR']}"]
    subprocess.run(cmd, check=True)
    return exe


def contenders(args: argparse.Namespace, exe: str) -> dict[str, list[str]]:
    """name -> its command; ``{dir}`` stands for its fresh store directory."""
    worker = [sys.executable, os.path.abspath(__file__), "--worker", "--size", str(args.size),
              "--batch", str(args.batch), "--dir", "{dir}"] + (["--sync"] if args.sync else [])
    loop = [exe, "{dir}", str(args.size), str(args.batch), str(mean_value_size()), str(CONTAINERS),
            str(max(1, args.size // STEPS))] + (["sync"] if args.sync else [])
    return {
        "rdirdb plain": worker,
        "rdirdb writemap": worker + ["--writemap"],
        "C loop plain": loop,
        "C loop writemap": loop + ["writemap"],
    }


class Running:
    """A contender's process, filling a fresh directory; it works when told to."""

    def __init__(self, name: str, command: list[str], workdir: str) -> None:
        self.name = name
        self.directory = tempfile.mkdtemp(dir=workdir)
        self.proc = subprocess.Popen([a.replace("{dir}", self.directory) for a in command],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.steps: list[dict] = []
        self.read()  # {"ready": true}

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} failed (exit code {self.proc.wait()})")
        return json.loads(line)

    def turn(self) -> dict:
        """Let it do the next part of its work; returns its report."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.read()

    @property
    def records(self) -> int:
        return self.steps[-1]["records"] if self.steps else 0

    def finish(self) -> dict:
        """Its last report (rdirdb: after its scans), with its steps and disk figures."""
        last = self.turn()
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise SystemExit(f"{self.name} exited with {self.proc.returncode}")
        if "disk_bytes" not in last:  # the C loop: measured here
            last["disk_bytes"], last["file_bytes"] = disk_bytes(self.directory)
        last["steps"] = self.steps
        return last

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def run_in_turns(commands: dict[str, list[str]], size: int, workdir: str) -> dict[str, dict]:
    """One sample of every contender, each tenth in turns (the order rotating)."""
    running: list[Running] = []
    try:
        for name, command in commands.items():
            running.append(Running(name, command, workdir))
        for turn in itertools.count():
            if all(r.records == size for r in running):
                break
            k = turn % len(running)
            for r in running[k:] + running[:k]:
                r.steps.append(r.turn())
            print(f"  {label_of(running[0].records):>5}: " + ", ".join(
                f"{r.name} {per_step({'steps': r.steps})[-1]['rate'] / 1e3:.0f}k/s" for r in running), flush=True)
        return {r.name: r.finish() for r in running}
    finally:
        for r in running:
            r.close()


# -- figures -------------------------------------------------------------------------


def per_step(sample: dict) -> list[dict]:
    """records/s and CPU microseconds per record of each tenth."""
    out, last = [], {"records": 0, "seconds": 0.0, "user": 0.0, "system": 0.0}
    for step in sample["steps"]:
        n = step["records"] - last["records"]
        out.append({
            "rate": n / (step["seconds"] - last["seconds"]),
            "user_us": (step["user"] - last["user"]) * 1e6 / n,
            "system_us": (step["system"] - last["system"]) * 1e6 / n,
        })
        last = step
    return out


def medians(samples: list[dict]) -> list[dict]:
    steps = [per_step(s) for s in samples]
    return [{key: statistics.median(s[i][key] for s in steps) for key in steps[0][i]}
            for i in range(len(steps[0]))]


def label_of(records: int) -> str:
    return f"{records / 1e6:g}M" if records >= 1_000_000 else f"{records / 1e3:g}k"


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """Print the tables; returns what ``--json`` writes."""
    marks = [label_of(step["records"]) for step in next(iter(results.values()))[0]["steps"]]
    steps = {name: medians(samples) for name, samples in results.items()}
    rates = {name: [s["rate"] for s in rows] for name, rows in steps.items()}

    def row(label: str, cells: list[str], last: str = "") -> None:
        print(f"{label:<24}" + "".join(f"{c:>8}" for c in cells) + f"{last:>10}")

    print(f"\n== insert, records/s per tenth ({args.size:,} records, batches of {args.batch:,}, "
          f"{'sync' if args.sync else 'nosync'}, medians of {args.reps})")
    row("", marks, "last/1st")
    for name, r in rates.items():
        row(name, [f"{x / 1e3:.0f}k" for x in r], f"{r[-1] / r[0]:.2f}x")
    for a, b in (("rdirdb plain", "C loop plain"), ("rdirdb writemap", "C loop writemap"),
                 ("rdirdb writemap", "rdirdb plain"), ("C loop writemap", "C loop plain")):
        if a in rates and b in rates:
            short = {"rdirdb plain": "rdirdb", "rdirdb writemap": "rdirdb wm",
                     "C loop plain": "C", "C loop writemap": "C wm"}
            row(f"{short[a]} / {short[b]}", [f"{x / y:.2f}x" for x, y in zip(rates[a], rates[b])])
    print("\n== CPU microseconds per record, user + system, per tenth")
    for name, rows in steps.items():
        row(name, [f"{s['user_us']:.1f}+{s['system_us']:.1f}" for s in rows])

    print(f"\n== the full volume ({args.size:,} records)")
    summary = {}
    for name, samples in results.items():
        def med(key: str) -> float:
            return statistics.median(s[key] for s in samples)

        figures = {"disk_bytes_per_chunk": med("disk_bytes") / args.size,
                   "file_bytes": med("file_bytes"), "max_rss": med("max_rss")}
        line = (f"{name:<24}{figures['disk_bytes_per_chunk']:.0f} bytes/chunk on disk "
                f"(data file {figures['file_bytes'] / 2**20:,.0f} MiB long), "
                f"peak RSS {figures['max_rss'] / 2**20:,.0f} MiB")
        if "fetch_seconds" in samples[0]:
            figures.update(
                insert_max_rss=med("insert_max_rss"),
                fetch_rate=args.size / med("fetch_seconds"),
                listings_per_s=samples[0]["listings"] / med("listing_seconds"),
                listed_per_s=statistics.median(s["listed"] / s["listing_seconds"] for s in samples),
            )
            line += (f" ({figures['insert_max_rss'] / 2**20:,.0f} MiB after the inserts)\n{'':<24}"
                     f"full fetch {figures['fetch_rate']:,.0f} records/s; "
                     f"{figures['listings_per_s']:,.0f} container listings/s "
                     f"({figures['listed_per_s']:,.0f} records/s)")
        summary[name] = figures
        print(line)
    return {"size": args.size, "batch": args.batch, "sync": args.sync, "reps": args.reps,
            "marks": marks, "steps": steps, "full_volume": summary, "samples": results}


def plot(data: dict, path: str) -> None:
    """records/s per tenth, and CPU time per record (steadier on a shared machine),
    one line per contender (needs matplotlib: the bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, cpu_ax) = plt.subplots(2, 1, figsize=(7, 7), dpi=110, sharex=True)
    styles = {"rdirdb plain": "-o", "rdirdb writemap": "-s", "C loop plain": "--o", "C loop writemap": "--s"}
    for name, rows in data["steps"].items():
        x = [step["records"] / 1e6 for step in data["samples"][name][0]["steps"]]
        rate_ax.plot(x, [s["rate"] / 1e3 for s in rows], styles.get(name, "-"), label=name)
        cpu_ax.plot(x, [s["user_us"] + s["system_us"] for s in rows], styles.get(name, "-"), label=name)
    rate_ax.set_ylabel("thousand records/s (per tenth)")
    rate_ax.set_title(f"Batch inserts into one volume: {data['batch']:,} random chunks per batch, "
                      f"{'sync' if data['sync'] else 'nosync'}, medians of {data['reps']}", fontsize=10)
    cpu_ax.set_ylabel("CPU microseconds per record\n(user + system)")
    cpu_ax.set_xlabel("records in the volume (millions)")
    for ax in (rate_ax, cpu_ax):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    rate_ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000_000, help="records (default 10,000,000)")
    parser.add_argument("--quick", action="store_true", help=f"a smoke test: --size {QUICK_SIZE:,}")
    parser.add_argument("--batch", type=int, default=10_000, help="records per batch (default 10,000)")
    parser.add_argument("--sync", action="store_true", help="durable commits (db_sync on)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions; medians are printed")
    parser.add_argument("--only", help="comma-separated contenders (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--plot", metavar="PNG", help="also plot records/s per tenth (needs matplotlib)")
    parser.add_argument("--workdir", help="where the stores are made (default: the temporary directory)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--writemap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size = QUICK_SIZE
    if args.size < STEPS or args.batch < 1 or args.reps < 1:
        parser.error(f"--size must be at least {STEPS}, --batch and --reps positive")
    if args.worker:
        rdirdb_worker(args.dir, args.size, args.batch, args.sync, args.writemap)
        return 0

    import rdirdb

    workdir = tempfile.mkdtemp(prefix="rdirdb-growth-", dir=args.workdir)
    try:
        commands = contenders(args, build_c_loop(workdir))
        if args.only:
            names = args.only.split(",")
            unknown = set(names) - set(commands)
            if unknown:
                parser.error(f"unknown contenders {sorted(unknown)}; known: {list(commands)}")
            commands = {name: commands[name] for name in names}
        print(f"rdirdb {rdirdb.__version__}, liblmdb {'.'.join(map(str, rdirdb.lmdb_version()))}, "
              f"{os.cpu_count()} CPUs; {args.size:,} records, {args.reps} repetition(s)", flush=True)
        results: dict[str, list[dict]] = {name: [] for name in commands}
        started = time.perf_counter()
        for rep in range(args.reps):
            t0 = time.perf_counter()
            for name, sample in run_in_turns(commands, args.size, workdir).items():
                results[name].append(sample)
            print(f"  repetition {rep + 1}/{args.reps}: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data = report(results, args)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    if args.plot:
        plot(data, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
