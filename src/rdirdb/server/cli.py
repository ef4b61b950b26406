"""``rdirdb serve``: the command line of the rdir HTTP server."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Callable, Sequence

from rdirdb.rdir.store import MAX_CLOCK_SKEW, TOMBSTONE_RETENTION
from rdirdb.tools.common import count, seconds

CPUS = os.cpu_count() or 1
MAX_WORKERS_PER_CPU = 8  # workers are CPU-bound event loops: more only compete for the CPUs


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``serve`` subcommand; its ``handler(args)`` returns the exit code."""
    parser = subparsers.add_parser(
        "serve",
        help="serve rdir volumes over HTTP (the OpenIO rdir wire protocol)",
        description="Serve the rawx and meta2 volumes stored under --db-path over HTTP.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def _workers(text: str) -> int:
    """An argparse type: a worker count from 1 to MAX_WORKERS_PER_CPU per CPU."""
    most = MAX_WORKERS_PER_CPU * CPUS
    workers = count("processes")(text)
    if workers > most:
        raise argparse.ArgumentTypeError(
            f"at most {most} ({MAX_WORKERS_PER_CPU} per CPU, {CPUS} CPUs here), not {workers}"
        )
    return workers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db-path", required=True, help="directory of the volumes (must exist)")
    parser.add_argument("--bind", default="127.0.0.1:6300", help="HOST:PORT (default %(default)s)")
    parser.add_argument(
        "--workers", type=_workers, default=CPUS,
        help=f"worker processes, at most {MAX_WORKERS_PER_CPU} per CPU (default: one per CPU, %(default)s)",
    )
    parser.add_argument("--service-id", help="service id (default: the bound HOST:PORT)")
    parser.add_argument("--namespace", default="OPENIO", help="namespace (default %(default)s)")
    parser.add_argument(
        "--max-body-size", type=count("bytes"), default=32 << 20,
        help="largest request body in bytes; larger ones get 413 (default %(default)s)",
    )
    parser.add_argument(
        "--request-timeout", type=seconds(), default=30.0,
        help="seconds to receive a whole request (default %(default)s)",
    )
    parser.add_argument(
        "--keepalive-timeout", type=seconds(), default=60.0,
        help="seconds an idle connection stays open (default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-timeout", type=seconds(zero=True), default=10.0,
        help="seconds SIGTERM waits for requests in progress (default %(default)s)",
    )
    parser.add_argument(
        "--fsync", action=argparse.BooleanOptionalAction, default=True,
        help="answer a write once its commit is flushed to disk (survives power loss; writes "
        "arriving meanwhile share the next commit); --no-fsync answers once committed, like "
        "the reference: a write survives the process but not the machine (default: --fsync)",
    )
    parser.add_argument(
        "--writemap", action=argparse.BooleanOptionalAction, default=None,
        help="open the volumes with LMDB's MDB_WRITEMAP: faster unsynced writes on large "
        "volumes, a sparse data file (default: on with --no-fsync, else off; see docs/operations.md)",
    )
    parser.add_argument(
        "--pretouch", action=argparse.BooleanOptionalAction, default=False,
        help="with --no-fsync and MDB_WRITEMAP, a thread per volume faults in, after each write, the "
        "free pages the next writes reuse: pays where a CPU is free (default: off; see docs/engine.md)",
    )
    parser.add_argument("--registry", help="service registry URL (file:///path.json or a PostgreSQL DSN) to register in")
    parser.add_argument("--location", default="", help="dc.rack.host.disk, for the dispatcher (default none)")
    parser.add_argument(
        "--heartbeat", type=seconds(), default=5.0, help="seconds between registry refreshes (default %(default)s)"
    )
    parser.add_argument(
        "--repair-interval", type=seconds(), default=None, metavar="SECONDS",
        help="repair the volumes held here with their other replicas (from --registry) every SECONDS, "
        "and purge expired tombstones (default: never; docs/reliability.md)",
    )
    parser.add_argument(
        "--tombstone-retention", type=seconds(), default=TOMBSTONE_RETENTION, metavar="SECONDS",
        help="how long a delete's tombstone is kept for repair (default 10 days: a replica down "
        "longer must be cleared and copied)",
    )
    parser.add_argument(
        "--max-clock-skew", type=seconds(zero=True), default=MAX_CLOCK_SKEW, metavar="SECONDS",
        help="refuse repair entries stamped more than SECONDS ahead of this host's clock (default "
        "%(default)s: a stamp far ahead would win over every later write of its key)",
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="DEBUG logs every request (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(  # force: the server's own --log-level wins over rdirdb's default
        level=args.log_level,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    log = logging.getLogger("rdirdb.server")
    try:  # imported here: `rdirdb` itself must work without the server extra
        from rdirdb.server.serve import Settings, StartupError, parse_bind, serve
    except ImportError as exc:
        log.error("rdirdb serve needs the server extra (pip install 'rdirdb[server]'): %s", exc)
        return 1
    try:
        host, port = parse_bind(args.bind)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    settings = Settings(
        db_path=args.db_path,
        host=host,
        port=port,
        workers=args.workers,
        namespace=args.namespace,
        service_id=args.service_id,
        max_body=args.max_body_size,
        request_timeout=args.request_timeout,
        keepalive_timeout=args.keepalive_timeout,
        shutdown_timeout=args.shutdown_timeout,
        fsync=args.fsync,
        writemap=args.writemap,
        pretouch=args.pretouch,
        registry=args.registry,
        location=args.location,
        heartbeat=args.heartbeat,
        repair_interval=args.repair_interval,
        tombstone_retention=args.tombstone_retention,
        max_clock_skew=args.max_clock_skew,
    )
    return serve(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rdirdb.server --db-path DIR ...``: the same as ``rdirdb serve``."""
    parser = argparse.ArgumentParser(prog="python -m rdirdb.server", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
