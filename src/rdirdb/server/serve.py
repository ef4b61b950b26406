"""Process model: one master, N pre-forked workers sharing one listening socket.

The master checks the database directory, binds, claims the directory (its
identity, and a lock held as long as any of the server's processes lives), forks
the workers and forwards SIGTERM/SIGINT to them. Each worker opens its own
LMDB environments after the fork (LMDB handles must not cross a fork; LMDB
itself is multi-process safe) and serves connections on its own event loop.

Graceful shutdown: a worker stops accepting, lets every request in progress
finish and answers it (``Connection: close``), closes idle connections, then
syncs and closes its environments. A write is acknowledged only after its
transaction committed, so no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import gc
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from rdirdb.server.app import DEFAULT_LIMIT, MAX_LIMIT, RdirApp
from rdirdb.server.commit import GroupCommit
from rdirdb.server.http import MAX_HEAD, MAX_URL, HttpProtocol, ServerState
from rdirdb.rdir.store import (MAX_CLOCK_SKEW, TOMBSTONE_RETENTION, Store, check_clock_skew, default_writemap,
                               volume_file_name)
from rdirdb.errors import BadRequest

log = logging.getLogger("rdirdb.server")

IDENTITY_FILE = ".rdir-identity"
RUN_DIR = ".rdir-run"  # one empty file per volume opened since start, by any worker
RESPAWN_MIN_LIFETIME = 1.0  # a worker dying younger than this stops the server
ORPHAN_CHECK = 0.25  # seconds between two checks that the master is alive
STOP_SIGNALS = frozenset((signal.SIGTERM, signal.SIGINT))
ACCEPT_PAUSE = 0.0005  # seconds per connection served before accepting another
MAX_ACCEPT_PAUSE = 0.005
GC_THRESHOLD = 100_000  # allocations between two young-generation collections
INLINE_BELOW = 5  # unsynced groups of fewer requests commit on the event loop (docs/server.md)


class StartupError(Exception):
    pass


@dataclass
class Settings:
    db_path: str
    host: str = "127.0.0.1"
    port: int = 6300
    workers: int = 1
    namespace: str = "OPENIO"
    service_id: str | None = None
    max_body: int = 32 << 20
    request_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    fsync: bool = True  # durable writes (the reference's: False): docs/server.md, "Shutdown and durability"
    writemap: bool | None = None  # MDB_WRITEMAP; None: the Store's default (on unless fsync)
    pretouch: bool = False  # Store(pretouch=True): docs/engine.md, "Pretouching"
    registry: str | None = None  # URL of the service registry to register in
    location: str = ""  # dc.rack.host.disk, for the dispatcher's distance rules
    heartbeat: float = 5.0
    repair_interval: float | None = None  # seconds between periodic repairs (rdirdb.server.repairer)
    tombstone_retention: float = TOMBSTONE_RETENTION  # seconds a delete's tombstone is kept
    max_clock_skew: float = MAX_CLOCK_SKEW  # seconds a received stamp may be ahead of this host's clock

    def config(self) -> dict[str, object]:
        """The /config document (there is no central configuration)."""
        return {
            "namespace": self.namespace,
            "rdir.db_path": os.path.abspath(self.db_path),
            "rdir.listing.default_limit": DEFAULT_LIMIT,
            "rdir.listing.max_limit": MAX_LIMIT,
            "rdir.fsync": self.fsync,
            "rdir.writemap": default_writemap(self.fsync) if self.writemap is None else self.writemap,
            "rdir.pretouch": self.pretouch,
            "rdir.tombstone_retention": self.tombstone_retention,
            "rdir.max_clock_skew": self.max_clock_skew,
            "rdir.repair_interval": self.repair_interval,
            "server.workers": self.workers,
            "server.max_body_size": self.max_body,
            "server.max_url_size": MAX_URL,
            "server.max_header_size": MAX_HEAD,
            "server.request_timeout": self.request_timeout,
            "server.keepalive_timeout": self.keepalive_timeout,
            "server.shutdown_timeout": self.shutdown_timeout,
        }


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``port`` (on 127.0.0.1)."""
    host, sep, port = bind.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", bind
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise StartupError(f"invalid --bind {bind!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise StartupError(f"invalid port {number} in --bind {bind!r}")
    return host, number


def check_db_path(path: str) -> None:
    if not os.path.exists(path):
        raise StartupError(f"database directory {path!r} does not exist")
    if not os.path.isdir(path):
        raise StartupError(f"database path {path!r} is not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartupError(f"database directory {path!r} is not readable, writable and searchable")


def claim_identity(path: str, identity: str, namespace: str) -> int:
    """Claim the directory for this server; returns the descriptor that holds the claim.

    Refuses a directory that belongs to another rdir service (like the reference's
    volume lock), and one that another server is serving, even under the same
    identity: the server locks its identity file (``flock``) and every process it
    forks inherits the lock, so the directory stays claimed until the last of them
    exits.
    """
    wanted = {"type": "rdir", "service": identity, "namespace": namespace}
    file = os.path.join(path, IDENTITY_FILE)
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot open {file}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_identity(file) or {}
            raise StartupError(
                f"{path} is being served by another rdirdb server (rdir service "
                f"{other.get('service')!r}); stop it first"
            ) from None
        found = _read_identity(file)
        if found is None:  # a new directory
            os.write(fd, json.dumps(wanted).encode())
            os.fsync(fd)
        elif found != wanted:
            raise StartupError(
                f"{path} belongs to rdir service {found.get('service')!r} of namespace "
                f"{found.get('namespace')!r}, not to {identity!r} of {namespace!r}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_identity(file: str) -> dict[str, Any] | None:
    """The identity recorded in ``file``; None when it is empty (a new directory)."""
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
        found = json.loads(text) if text else None
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot read {file}: {exc}") from None
    if found is not None and not isinstance(found, dict):
        raise StartupError(f"cannot read {file}: not a JSON object")
    return found


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# -- worker ---------------------------------------------------------------------


class OpenedVolumes:
    """The volumes opened by any worker since start: one empty file each in a run dir."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def add(self, service_type: str, volume_id: str) -> None:
        name = os.path.join(self.run_dir, f"{service_type}-{volume_file_name(volume_id)}")
        try:
            open(name, "a").close()
        except FileNotFoundError:  # the server is going away
            pass

    def count(self) -> int:
        try:
            return len(os.listdir(self.run_dir))
        except FileNotFoundError:
            return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is faster, asyncio's own loop works too
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _accept(sock: socket.socket, state: ServerState) -> None:
    """Accept connections one at a time on the shared socket.

    ``loop.create_server`` accepts every pending connection at each wake-up, so
    one worker took all of wrk's 8 connections and the others idled. Taking one
    at a time, and pausing a little longer the more connections this worker
    already serves, lets the other workers take their share.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, _ = await loop.sock_accept(sock)
        except OSError as exc:  # e.g. EMFILE: keep serving the open connections
            log.warning("accept failed: %s", exc)
            await asyncio.sleep(0.1)
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # shielded: cancelled halfway (at shutdown), the transport was left unclosable
        await asyncio.shield(loop.connect_accepted_socket(lambda: HttpProtocol(state), conn))
        await asyncio.sleep(min(ACCEPT_PAUSE * len(state.connections), MAX_ACCEPT_PAUSE))


async def _stop_when_orphaned(stop: asyncio.Event, opened: OpenedVolumes, master: int) -> None:
    """A worker whose master died (SIGKILL) shuts down instead of serving alone
    forever, and removes the run directory the master could not.

    ``master`` is the pid the master had before forking: read in the worker, it
    could already be 1 (the master died in the worker's first moments).
    """
    while os.getppid() == master:
        await asyncio.sleep(ORPHAN_CHECK)
    log.warning("worker %d: the master %d is gone, stopping", os.getpid(), master)
    shutil.rmtree(opened.run_dir, ignore_errors=True)
    stop.set()


async def _serve(sock: socket.socket, settings: Settings, opened: OpenedVolumes, master: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one sent since the fork arrives now
    orphan_watch = loop.create_task(_stop_when_orphaned(stop, opened, master))
    store = Store(settings.db_path, sync=settings.fsync, writemap=settings.writemap,
                  tombstone_retention=settings.tombstone_retention, max_clock_skew=settings.max_clock_skew,
                  warm=True, pretouch=settings.pretouch)
    # Synced commits wait for the disk: off the event loop, which meanwhile
    # gathers the next group, and the next commit (of any worker) flushes the
    # meta page of the one before. Unsynced commits are short: small groups on
    # the loop.
    committer = GroupCommit(inline_below=0 if settings.fsync else INLINE_BELOW, defer_meta=settings.fsync)
    app = RdirApp(
        store,
        namespace=settings.namespace,
        service_id=settings.service_id,
        config=settings.config(),
        opened_count=opened.count,
        on_open=opened.add,
        committer=committer,
    )
    state = ServerState(
        app.handle,
        max_body=settings.max_body,
        request_timeout=settings.request_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        grouped=app.grouped,
    )
    acceptor = loop.create_task(_accept(sock, state))
    await stop.wait()
    orphan_watch.cancel()

    state.closing = True
    acceptor.cancel()
    await asyncio.gather(acceptor, return_exceptions=True)
    deadline = loop.time() + settings.shutdown_timeout
    while state.connections and loop.time() < deadline:
        for conn in list(state.connections):  # again each time: a request may have ended
            conn.shutdown()
        await asyncio.sleep(0.01)
    for conn in list(state.connections):  # stuck clients: their requests never completed
        if conn.transport is not None:
            conn.transport.abort()
    await committer.close()
    for volume in store:
        volume.env.sync()
    store.close()


def tune_gc() -> None:
    """Collect rarely: pages allocate many containers and requests make no cycles.

    A 10,000-record page allocates 20,000 lists and dicts; with the default
    thresholds the collector ran dozens of times per page (2.5x slower pages).
    Rare collections still reclaim any cycle.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)


def run_worker(sock: socket.socket, settings: Settings, opened: OpenedVolumes, master: int) -> int:
    tune_gc()
    loop = _new_loop()
    try:
        loop.run_until_complete(_serve(sock, settings, opened, master))
    except Exception:
        log.exception("worker %d failed", os.getpid())
        return 1
    finally:
        loop.close()
    return 0


# -- master ---------------------------------------------------------------------


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back in the master while it forks a child and records it.

    A child starts with them still blocked (the mask is inherited) and at their
    default action, and unblocks them once it can act on them: a signal sent at
    any moment reaches every process, instead of running, in a child just forked,
    the copy of the master's handler (which ignored it: the server went on).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _fork(child: Callable[[], int]) -> int:
    """Fork a process that runs ``child()`` and exits with its code (call it with
    the stop signals blocked); returns the pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            code = child()
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def _start_heartbeat(
    settings: Settings, identity: str, addr: str, opened: OpenedVolumes, served: tuple[socket.socket, int]
) -> int | None:
    """Fork the process that registers the server in the registry (if one is
    configured), keeps the entry fresh and removes it at the end.

    ``served`` are the listening socket and the directory's claim: the heartbeat
    closes its copies, so that they are free as soon as the workers are gone.
    """
    registry = settings.registry
    if not registry:
        return None
    from rdirdb.rdir.registry import Service
    from rdirdb.server.registration import run_heartbeat

    store = Store(settings.db_path, readonly=True)

    def stats() -> dict[str, Any]:
        rawx, meta2 = store.volumes("rawx"), store.volumes("meta2")
        return {"opened_db_count": opened.count(), "rawx_volumes": rawx, "meta2_volumes": meta2}

    service = Service(type="rdir", id=identity, addr=addr, location=settings.location)
    master = os.getpid()

    def heartbeat() -> int:
        sock, claim = served
        sock.close()
        os.close(claim)
        return run_heartbeat(registry, service, stats, settings.heartbeat, master, STOP_SIGNALS)

    return _fork(heartbeat)


def _start_repairer(settings: Settings, addr: str, served: tuple[socket.socket, int]) -> int | None:
    """Fork the periodic repair (``--repair-interval``), if asked for."""
    if not settings.repair_interval:
        return None
    from rdirdb.server.repairer import run_repairer

    master = os.getpid()
    interval = settings.repair_interval

    def repairer() -> int:
        sock, claim = served
        sock.close()
        os.close(claim)
        return run_repairer(settings.db_path, settings.fsync, settings.tombstone_retention, settings.registry,
                            addr, interval, master, STOP_SIGNALS)

    return _fork(repairer)


def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code."""
    try:
        check_db_path(settings.db_path)
        try:
            check_clock_skew(settings.max_clock_skew)
        except BadRequest as exc:
            raise StartupError(f"--max-clock-skew: {exc}") from None
        sock = bind_socket(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        identity = settings.service_id or f"{host}:{port}"
        try:
            claim = claim_identity(settings.db_path, identity, settings.namespace)
        except StartupError:
            sock.close()
            raise
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    settings = dataclasses.replace(settings, service_id=identity)  # what /info and /status show

    # Beside the volumes, so that a server killed outright (SIGKILL) leaks nothing
    # elsewhere: the next start on this directory resets it.
    run_dir = os.path.join(settings.db_path, RUN_DIR)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    opened = OpenedVolumes(run_dir)
    master = os.getpid()
    stopping = False
    children: dict[int, float] = {}

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def start_worker() -> None:
        with _stop_signals_blocked():
            children[_fork(lambda: run_worker(sock, settings, opened, master))] = time.monotonic()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    heartbeat = repairer = None
    try:
        for _ in range(settings.workers):
            if stopping:  # a SIGTERM during the start: fork no more
                break
            start_worker()
        log.info(
            "rdir %s serving %s on http://%s:%d with %d worker(s)",
            identity, settings.db_path, host, port, settings.workers,
        )
        with _stop_signals_blocked():
            heartbeat = _start_heartbeat(settings, identity, f"{host}:{port}", opened, (sock, claim))
            repairer = _start_repairer(settings, f"{host}:{port}", (sock, claim))
        sys.stdout.flush()
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except OSError as exc:  # pragma: no cover - EINTR is retried by Python
                if exc.errno != errno.EINTR:
                    raise
                continue
            started = children.pop(pid, None)
            if started is None or stopping:
                continue
            log.error("worker %d exited (status %d)", pid, status)
            if time.monotonic() - started < RESPAWN_MIN_LIFETIME:
                code = 1  # crashing at start: respawning would only spin
                on_signal(signal.SIGTERM, None)
                continue
            start_worker()
    finally:
        if repairer is not None:
            try:
                os.kill(repairer, signal.SIGTERM)
                os.waitpid(repairer, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if heartbeat is not None:  # it deregisters the server, then exits
            try:
                os.kill(heartbeat, signal.SIGTERM)
                os.waitpid(heartbeat, 0)
            except (ProcessLookupError, ChildProcessError):  # already gone and reaped
                pass
        sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        os.close(claim)
    log.info("rdir %s stopped", identity)
    return code
