"""``rdirdb rdir ...``: which rdir services index each rawx or meta2 volume.

As OpenIO's ``openio rdir bootstrap|assignments`` and ``openio-admin rdir
reassign|copy`` (reference §8), on the registry given by ``--registry``:

* ``bootstrap TYPE`` assigns rdir services to every volume that lacks some,
  and creates the volumes on them;
* ``assignments TYPE`` shows them, per volume, per rdir (``--aggregated``)
  or with their status (``--check``, exit code 1 unless every one is OK);
* ``reassign TYPE RDIR_ID`` moves every volume of an rdir service to others
  and copies each volume's index there (unless ``--no-copy``);
* ``copy TYPE VOLUME --dest HOST`` copies a volume's index between servers;
* ``repair VOLUME`` makes a volume's replicas converge (anti-entropy repair,
  ``rdirdb.rdir.repair``; ``--dry-run`` reports the differences).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from rdirdb.rdir.client import RdirClient
from rdirdb.rdir.dispatcher import STATUS_OK, UNASSIGNED, RdirDispatcher
from rdirdb.errors import RdirdbError
from rdirdb.progress import Progress
from rdirdb.rdir.registry import Registry, open_registry
from rdirdb.rdir.repair import describe_key, repair_hosts
from rdirdb.rdir.store import TOMBSTONE_RETENTION
from rdirdb.tools.common import (
    CommandError,
    Main,
    Subparsers,
    add_command,
    add_group,
    add_registry_flag,
    check_address,
    host_list,
    print_json,
    print_table,
    seconds,
)

VOLUME_TYPES = ("rawx", "meta2")


# -- command line ----------------------------------------------------------------


def add_parser(subparsers: Subparsers) -> None:
    commands = add_group(
        subparsers, "rdir",
        help="assign rdir services to volumes; reassign, copy",
        description="Assign rdir services to rawx and meta2 volumes, check the assignments, move the "
        "volumes of an rdir service to others, copy a volume's index (OpenIO's 'openio rdir').",
    )

    sub = _command(commands, "bootstrap", _bootstrap_main,
                   "assign rdir services to the volumes that lack some, and create them there")
    _add_placement_flags(sub, min_dist=None)
    sub.add_argument("--service-id", metavar="ID", help="only this volume")
    sub.add_argument("--dry-run", action="store_true", help="show the placement, record nothing")

    sub = _command(commands, "assignments", _assignments_main, "show the rdir services of every volume")
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--aggregated", action="store_true", help="one row per rdir service, with its volumes")
    mode.add_argument("--check", action="store_true",
                      help="the status of each volume's assignment (exit code 1 unless every one is OK)")
    sub.add_argument("--min-dist", type=int, default=3, metavar="N",
                     help="--check: the smallest location distance that is OK (default 3)")
    sub.add_argument("--replicas", type=int, default=3, metavar="N",
                     help="--check: the expected number of rdir services (default 3)")

    sub = _command(commands, "reassign", _reassign_main,
                   "move every volume of an rdir service to other rdir services and copy their indexes")
    sub.add_argument("rdir_id", metavar="RDIR_ID", help="the rdir service to empty")
    _add_placement_flags(sub, min_dist=None)
    sub.add_argument("--dry-run", action="store_true", help="show the new placement, record and copy nothing")
    sub.add_argument("--no-copy", action="store_true", help="record the new assignments, copy no index")

    sub = _command(commands, "copy", _copy_main, "copy a volume's index to other rdir servers")
    sub.add_argument("volume", metavar="VOLUME", help="the volume id")
    sub.add_argument("--dest", type=host_list, required=True, metavar="HOST[,HOST]",
                     help="destination rdir servers: host:port or rdir service ids")
    sub.add_argument("--source", type=host_list, metavar="HOST[,HOST]",
                     help="source rdir servers (default: the volume's rdir services)")

    sub = add_command(commands, "repair", _repair_main,
                      "make a volume's replicas converge: compare range digests, move what differs, "
                      "newest write wins")
    sub.add_argument("volume", metavar="VOLUME", help="the volume id")
    sub.add_argument("--type", choices=VOLUME_TYPES, default="rawx", help="the volume's type (default rawx)")
    where = sub.add_mutually_exclusive_group(required=True)
    where.add_argument("--registry", metavar="URL", help="the service registry: the volume's rdir services")
    where.add_argument("--hosts", type=host_list, metavar="HOST[,HOST]", help="the replicas' rdir servers")
    sub.add_argument("--dry-run", action="store_true", help="compare and report the differences, move nothing")
    sub.add_argument("--retention", type=seconds(), default=TOMBSTONE_RETENTION, metavar="SECONDS",
                     help="the servers' tombstone retention (default 10 days)")
    sub.add_argument("--show", type=int, default=20, metavar="N", help="differences listed (default 20)")


def _command(commands: Subparsers, name: str, main: Main, help: str) -> argparse.ArgumentParser:
    sub = add_command(commands, name, main, help)
    sub.add_argument("type", choices=VOLUME_TYPES, metavar="TYPE", help="rawx or meta2")
    add_registry_flag(sub)
    return sub


def _add_placement_flags(sub: argparse.ArgumentParser, *, min_dist: int | None) -> None:
    sub.add_argument("--max-per-rdir", type=int, metavar="N", help="at most N volumes per rdir service")
    sub.add_argument("--min-dist", type=int, default=min_dist, metavar="N",
                     help="the smallest location distance between a volume and its rdir services, "
                     "and between them (default 1: never the same location)")
    sub.add_argument("--replicas", type=int, default=3, metavar="N", help="rdir services per volume (default 3)")


# -- helpers ---------------------------------------------------------------------------


def _addrs(registry: Registry, names: list[str], *, registered: bool = False) -> list[str]:
    """HOST:PORT of each name: a registered rdir service id or an address
    (with ``registered``, the registered rdir services only)."""
    by_id = {s.id: s.addr for s in registry.services("rdir")}
    if registered:
        return [by_id[name] for name in names if name in by_id]
    return [by_id[name] if name in by_id else check_address(name) for name in names]


def _dispatcher(args: argparse.Namespace, registry: Registry, client: RdirClient) -> tuple[RdirDispatcher, list[str]]:
    """A dispatcher that creates each newly assigned volume on its rdir servers
    (through ``client``), and the list where it says which volumes it could not create.

    The dispatcher's own warnings are shown with ``-v`` only: every failure it
    logs is also in the error it raises, which the command reports once.
    """
    if not args.verbose:
        logging.getLogger("rdirdb.rdir.dispatcher").setLevel(logging.ERROR)
    failures: list[str] = []

    def create(volume_id: str, rdir_ids: list[str]) -> None:
        try:
            client.create(volume_id, args.type, rdir_hosts=_addrs(registry, rdir_ids, registered=True))
        except RdirdbError as exc:
            failures.append(f"{volume_id}: assigned, but not created on its rdir services ({exc}); retry with "
                            f"'rdirdb volume create {volume_id} --type {args.type} --registry {args.registry}'")

    return RdirDispatcher({"registry": args.registry}, registry=registry, on_assigned=create), failures


def _print_assignments(args: argparse.Namespace, services: list[dict[str, Any]]) -> None:
    rows = sorted(
        (s["id"], [r["id"] for r in s.get("rdir", [])], s["location"], [r["location"] for r in s.get("rdir", [])])
        for s in services
    )
    if args.json:
        print_json({"assignments": [
            {"type": args.type, "id": sid, "location": loc, "rdir": rdir, "rdir_location": rdir_loc}
            for sid, rdir, loc, rdir_loc in rows
        ]})
        return
    kind = args.type.upper()
    print_table(
        (kind, "RDIR", f"{kind} LOCATION", "RDIR LOCATION"),
        [(sid, ",".join(rdir) or UNASSIGNED, loc or "-", ",".join(r or "-" for r in rdir_loc) or "-")
         for sid, rdir, loc, rdir_loc in rows],
    )


def _copy(client: RdirClient, service_type: str, volume: str, sources: list[str] | None, dests: list[str],
          bar: Progress) -> int:
    copy = client.chunk_copy_vol if service_type == "rawx" else client.meta2_copy_vol
    return copy(volume, sources=sources, dests=dests, progress=bar.update)


# -- bootstrap and assignments ------------------------------------------------------------


def _bootstrap_main(args: argparse.Namespace) -> int:
    with open_registry(args.registry) as registry, RdirClient({"registry": args.registry}) as client:
        dispatcher, not_created = _dispatcher(args, registry, client)
        try:
            services = dispatcher.assign_services(
                args.type, max_per_rdir=args.max_per_rdir, min_dist=args.min_dist, replicas=args.replicas,
                service_id=args.service_id, dry_run=args.dry_run,
            )
        except RdirdbError as exc:
            # As OpenIO: show where things stand, then fail.
            _print_assignments(args, dispatcher.get_assignments(args.type)[0])
            raise CommandError(str(exc)) from exc
    _print_assignments(args, services)
    if not_created:
        raise CommandError("; ".join(not_created))
    return 0


def _assignments_main(args: argparse.Namespace) -> int:
    with open_registry(args.registry) as registry:
        dispatcher = RdirDispatcher({"registry": args.registry}, registry=registry)
        if args.aggregated:
            aggregated = dispatcher.get_aggregated_assignments(args.type)
            if args.json:
                print_json({"rdir": aggregated})
            else:
                print_table(("RDIR", "VOLUMES", args.type.upper()),
                            [(rid, len(vols), ",".join(vols) or "-") for rid, vols in sorted(aggregated.items())])
            return 0
        if not args.check:
            _print_assignments(args, dispatcher.get_assignments(args.type)[0])
            return 0
        rows = dispatcher.check_assignments(args.type, min_dist=args.min_dist, replicas=args.replicas)
    if args.json:
        print_json({"check": rows})
    else:
        print_table((args.type.upper(), "RDIR", "DISTANCE", "STATUS"),
                    [(r["id"], ",".join(r["rdir"]) or UNASSIGNED, "-" if r["distance"] is None else str(r["distance"]),
                      r["status"]) for r in sorted(rows, key=lambda r: r["id"])])
    bad = [r for r in rows if r["status"] != STATUS_OK]
    if bad:
        raise CommandError(f"{len(bad)} of {len(rows)} {args.type} assignments are not OK")
    return 0


# -- reassign and copy ---------------------------------------------------------------------


def _reassign_main(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    with open_registry(args.registry) as registry, RdirClient({"registry": args.registry}) as client:
        dispatcher, not_created = _dispatcher(args, registry, client)
        aggregated = dispatcher.get_aggregated_assignments(args.type)
        if args.rdir_id not in aggregated or args.rdir_id == UNASSIGNED:
            raise CommandError(f"{args.rdir_id!r} is not a registered rdir service and holds no {args.type} volume")
        with Progress(None, "copying") as bar:
            for volume in aggregated[args.rdir_id]:
                old = registry.get_assignment(volume)
                row: dict[str, Any] = {"volume": volume, "old": old, "new": [], "copied": None, "error": None}
                rows.append(row)
                try:
                    service = dispatcher.assign_services(
                        args.type, max_per_rdir=args.max_per_rdir, min_dist=args.min_dist,
                        replicas=args.replicas, service_id=volume, reassign=args.rdir_id, dry_run=args.dry_run,
                    )[0]
                    row["new"] = [r["id"] for r in service.get("rdir", [])]
                    added = [r for r in row["new"] if r not in old]
                except RdirdbError as exc:
                    row["error"] = str(exc)
                    failures.append(f"{volume}: {exc}")
                    continue
                if added and not (args.no_copy or args.dry_run):
                    # Read from the rdir services the volume keeps first, the one it leaves last.
                    sources = _addrs(registry, [r for r in old if r != args.rdir_id] + [args.rdir_id],
                                     registered=True)
                    try:
                        row["copied"] = _copy(client, args.type, volume, sources, _addrs(registry, added), bar)
                    except RdirdbError as exc:
                        row["error"] = f"reassigned, but the copy failed: {exc}"
                        failures.append(f"{volume}: {row['error']} (retry with 'rdirdb rdir copy {args.type} "
                                        f"{volume} --dest {','.join(added)}')")
    if args.json:
        print_json({"rdir": args.rdir_id, "volumes": rows})
    else:
        print_table(
            ("VOLUME", "OLD RDIR", "NEW RDIR", "COPIED", "ERROR"),
            [(r["volume"], ",".join(r["old"]), ",".join(r["new"]) or "-",
              "-" if r["copied"] is None else r["copied"], r["error"] or "-") for r in rows],
        )
    if args.no_copy:  # else the copy created the volumes, or says it failed
        failures += not_created
    if failures:
        raise CommandError(f"{len(failures)} of {len(rows)} volumes failed: " + "; ".join(failures))
    return 0


def _copy_main(args: argparse.Namespace) -> int:
    with open_registry(args.registry) as registry:
        dests = _addrs(registry, args.dest)
        if args.source:
            sources = _addrs(registry, args.source)
        else:
            sources = _addrs(registry, registry.get_assignment(args.volume), registered=True)
        sources = [host for host in sources if host not in dests]
    with RdirClient({"registry": args.registry}) as client:
        where: dict[str, Any] = {"rdir_hosts": sources} if sources else {}
        total = client.status(args.volume, **where)["chunk"].get("total") if args.type == "rawx" else None
        with Progress(total, "copying") as bar:
            copied = _copy(client, args.type, args.volume, sources, dests, bar)
    if args.json:
        print_json({"type": args.type, "volume": args.volume, "sources": sources, "dests": dests, "records": copied})
    else:
        print_table(("TYPE", "VOLUME", "SOURCES", "DESTS", "RECORDS"),
                    [(args.type, args.volume, ",".join(sources), ",".join(dests), copied)])
    return 0


def _repair_main(args: argparse.Namespace) -> int:
    if args.hosts:
        hosts = [check_address(h) for h in args.hosts]
    else:
        with open_registry(args.registry) as registry:
            hosts = [service.addr for service in registry.rdir_services(args.volume)]
    if len(hosts) < 2:
        raise CommandError(f"volume {args.volume!r} has {len(hosts)} replica(s): repair needs two or more")
    twice = sorted({h for h in hosts if hosts.count(h) > 1})
    if twice:  # a replica compared with itself would hide the one left out
        raise CommandError(f"{', '.join(twice)} listed twice: each replica once")
    with Progress(None, "dry run" if args.dry_run else "repairing", unit="ranges") as bar:
        def progress(done: int, known: int) -> None:
            bar.total = known
            bar.update(done - bar.done)

        report = repair_hosts(args.volume, hosts, args.type, dry_run=args.dry_run, retention=args.retention,
                              progress=progress)
    shown = [
        {"key": describe_key(d.key, args.type), "newest": "deleted" if d.deleted else "record",
         "replicas": d.replicas}
        for d in report.differences[: max(0, args.show)]
    ]
    refusals = [{"key": describe_key(r.key, args.type), "stamp": r.stamp, "replica": r.replica, "reason": r.reason}
                for r in report.refusals]
    if args.json:
        print_json({"type": args.type, "volume": args.volume, **report.as_dict(), "shown": shown,
                    "refusals": refusals})
        return _refused(report.refused)
    print_table(("TYPE", "VOLUME", "REPLICAS", "RANGES", "DIFFERING KEYS", "LISTED", "SENT", "APPLIED"),
                [(args.type, args.volume, len(hosts), report.ranges_compared, report.differing,
                  report.records_listed, report.records_sent, report.records_applied)])
    if shown:
        print(f"\n{'would get' if args.dry_run else 'got'} the newest version "
              f"({len(shown)} of {report.differing}):")
        print_table(("KEY", "NEWEST", "REPLICAS"), [(d["key"], d["newest"], ",".join(d["replicas"])) for d in shown])
    for key, values in report.admin_differences.items():
        print(f"\nadmin key {key!r} differs (not repaired): "
              + ", ".join(f"{host}={value if value is not None else '-'}" for host, value in values.items()))
    if refusals:
        print(f"\nrefused by a replica, not repaired ({len(refusals)} of {report.refused}):")
        print_table(("KEY", "STAMP", "REPLICA", "REASON"),
                    [(r["key"], r["stamp"], r["replica"], r["reason"]) for r in refusals])
    return _refused(report.refused)


def _refused(count: int) -> int:
    """The end of a repair: a failure when a replica refused entries (the rest was repaired)."""
    if count:
        entries = "1 entry" if count == 1 else f"{count} entries"
        raise CommandError(f"{entries} refused by a replica (see the report); everything else was repaired")
    return 0
