"""``rdirdb stats DIR``: per volume, records, size on disk, map size and LMDB page usage."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rdirdb._rdir import CHUNK_DATABASES, META2_DATABASES
from rdirdb.rdir.store import Store, Volume
from rdirdb.tools.common import (
    Subparsers,
    add_filter_flags,
    add_json_flag,
    add_store_flag,
    handler,
    human_bytes,
    open_store,
    print_json,
    print_table,
    record_count,
    select_volumes,
)

_PAGES = ("branch_pages", "leaf_pages", "overflow_pages")


def disk_usage(path: str) -> int:
    """Bytes allocated on disk by the files of a volume directory."""
    total = 0
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def volume_stats(vol: Volume) -> dict[str, Any]:
    env = vol.env
    info = env.info()
    databases = {name: env.stat(name) for name in (CHUNK_DATABASES if vol.service_type == "rawx" else META2_DATABASES)}
    psize = env.stat()["psize"]
    return {
        "type": vol.service_type,
        "volume": vol.volume_id,
        "records": record_count(vol),
        "disk_bytes": disk_usage(env.path),
        "map_size": info["map_size"],
        "used_bytes": (info["last_pgno"] + 1) * psize,
        "psize": psize,
        "depth": max(s["depth"] for s in databases.values()),
        **{k: sum(s[k] for s in databases.values()) for k in _PAGES},
        "databases": databases,
    }


def collect(store: Store, volume_id: str | None = None, service_type: str | None = None) -> list[dict[str, Any]]:
    return [volume_stats(store.volume(v, t)) for t, v in select_volumes(store, volume_id, service_type)]


def add_parser(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "stats",
        help="records, disk and LMDB page usage per volume",
        description="Per volume: records, bytes on disk, map size, bytes used by pages, and LMDB's "
        "page statistics (tree depth, branch/leaf/overflow pages, page size), summed over the "
        "volume's databases (--json details each database). Read-only; safe on a served store.",
    )
    p.add_argument("dir", nargs="?", metavar="DIR", help="the store directory (or --db-path)")
    add_store_flag(p, required=False)
    add_filter_flags(p)
    add_json_flag(p)
    p.set_defaults(handler=handler(_main), parser=p)


def _main(args: argparse.Namespace) -> int:
    if (args.dir is None) == (args.db_path is None):
        args.parser.error("give the store directory once: DIR or --db-path")
    with open_store(args.dir or args.db_path, readonly=True) as store:
        volumes = collect(store, args.volume, args.type)
    if args.json:
        print_json({"volumes": volumes})
        return 0
    headers = ("TYPE", "VOLUME", "RECORDS", "DISK", "MAP", "USED", "DEPTH", "BRANCH", "LEAF", "OVERFLOW", "PSIZE")
    rows = [
        (v["type"], v["volume"], v["records"], human_bytes(v["disk_bytes"]), human_bytes(v["map_size"]),
         human_bytes(v["used_bytes"]), v["depth"], v["branch_pages"], v["leaf_pages"], v["overflow_pages"],
         v["psize"])
        for v in volumes
    ]
    print_table(headers, rows)
    return 0
