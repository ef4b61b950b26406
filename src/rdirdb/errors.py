"""Every exception rdirdb raises.

Two families share one base, :class:`RdirdbError`:

* the storage engine's errors (:class:`LmdbError` and one subclass per LMDB
  return code or errno value; the native modules raise them through a single
  table), plus :class:`ClosedError` for a handle used after ``close()``;
* the rdir API errors, named as OpenIO's client names them
  (:class:`OioException`, :class:`NotFound`, :class:`BadRequest`, ...) so that
  code written against OpenIO catches the same classes.

Bad input raises :class:`BadRequest`, which is also a :class:`ValueError`, or a
plain :class:`TypeError` for a value of the wrong type; either is marked with
:func:`caller_error`, so that a server tells the caller's mistakes (400) from
bugs and storage failures (500).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

E = TypeVar("E", bound=Exception)


def caller_error(exc: E, reference: str | None = None) -> E:
    """Mark ``exc`` as the caller's mistake and return it.

    ``exc.reference`` is then the message an rdir server answers with a 400:
    ``reference`` when given (what OpenIO's server says for the same mistake,
    e.g. ``Missing field [mtime]``), else the exception's own message.
    """
    exc.reference = reference if reference is not None else getattr(exc, "message", str(exc))  # type: ignore[attr-defined]
    return exc


def caller_message(exc: BaseException) -> str | None:
    """The 400 message of an exception marked by :func:`caller_error`, else None."""
    return getattr(exc, "reference", None)


class RdirdbError(Exception):
    """Base class of every rdirdb error."""


class ClosedError(RdirdbError, RuntimeError):
    """A handle (environment, transaction, cursor, store) was used after close()."""


# --------------------------------------------------------------------------
# Storage engine (LMDB)
# --------------------------------------------------------------------------


class LmdbError(RdirdbError):
    """An LMDB call failed.

    ``what`` names the C function that failed, ``code`` is LMDB's return code
    (an MDB_* constant or an errno value) and ``reason`` LMDB's own text.
    """

    hint = ""

    def __init__(self, what: str, code: int, reason: str) -> None:
        self.what = what
        self.code = code
        self.reason = reason
        message = f"{what}: {reason}"
        if self.hint:
            message = f"{message} ({self.hint})"
        super().__init__(message)


class KeyExistsError(LmdbError):
    hint = "the key is already stored and overwriting was not allowed"


class PageNotFoundError(LmdbError):
    hint = "a database page is missing: the file is corrupted or was truncated"


class CorruptedError(LmdbError):
    hint = "the database file is corrupted; restore it from a backup"


class PanicError(LmdbError):
    hint = "the environment hit a fatal error; close and reopen it"


class VersionMismatchError(LmdbError):
    hint = "the database was written by an incompatible LMDB version"


class InvalidError(LmdbError):
    hint = "the file is not an LMDB database"


class MapFullError(LmdbError):
    hint = "the memory map is full and could not be grown"


class MapGrownError(MapFullError):
    """The map was full: the write transaction was aborted and the map grown.
    Run the transaction again (rdirdb._lmdb.replay and Environment.write do)."""

    hint = ""


class DbsFullError(LmdbError):
    hint = "too many named databases in this environment"


class ReadersFullError(LmdbError):
    hint = "too many concurrent readers; raise max_readers or close idle readers"


class TlsFullError(LmdbError):
    hint = "too many threads hold read transactions"


class TxnFullError(LmdbError):
    hint = "the transaction has too many dirty pages; write smaller batches"


class CursorFullError(LmdbError):
    hint = "the cursor stack is too deep (internal LMDB limit)"


class PageFullError(LmdbError):
    hint = "a page has no room left (internal LMDB limit)"


class MapResizedError(LmdbError):
    hint = "another process grew the map; retry the operation"


class IncompatibleError(LmdbError):
    hint = "the operation does not match the database's flags"


class BadRslotError(LmdbError):
    hint = "a reader slot was used by the wrong thread"


class BadTxnError(LmdbError):
    hint = "the transaction already failed; abort it and start a new one"


class BadValSizeError(LmdbError):
    hint = "a key or value has an unsupported size"


class BadDbiError(LmdbError):
    hint = "the database handle was closed or changed by another process"


class DiskFullError(LmdbError):
    hint = "no space left on the device; free disk space and retry"


class LmdbPermissionError(LmdbError):
    hint = "check the permissions of the store's directory"


class LmdbFileNotFoundError(LmdbError):
    hint = "the path does not exist"


class LmdbInvalidParameterError(LmdbError):
    hint = "an invalid parameter was given to LMDB"


class LmdbMemoryError(LmdbError):
    hint = "out of memory"


class LmdbIOError(LmdbError):
    hint = "an I/O error occurred on the database file"


class LmdbReadOnlyError(LmdbError):
    hint = "the environment or file system is read-only"


class LmdbBusyError(LmdbError):
    hint = "the database is busy"


class UnsupportedLmdbError(LmdbError):
    hint = "this liblmdb cannot hold rdirdb's stores; install a standard build (Debian: liblmdb-dev)"


# --------------------------------------------------------------------------
# rdir API (OpenIO's class names)
# --------------------------------------------------------------------------


class OioException(RdirdbError):
    """Base of the rdir API errors (OpenIO's ``OioException``)."""


class ClientException(OioException):
    """An error answered for a request; ``http_status`` is its HTTP status.

    ``over_http`` when a server answered it: only then does the text name the
    status (as OpenIO's does); the embedded client's errors say what is wrong only.
    """

    http_status = 500
    details: dict[str, Any] | None = None  # fields a server adds to the error's JSON body

    def __init__(self, message: str = "", http_status: int | None = None, *, over_http: bool = False) -> None:
        if http_status is not None:
            self.http_status = http_status
        self.message = message
        self.over_http = over_http
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.http_status})" if self.over_http else self.message


class BadRequest(ClientException, ValueError):
    """The request or a record in it is invalid; nothing was written."""

    http_status = 400


class RefusedEntries(BadRequest):
    """Entries of another replica that a volume refuses to apply (repair's ``apply``);
    nothing of the request was applied.

    ``refused`` lists ``(index, full key, reason)`` for every refused entry, so
    that the sender can send the others again (an rdirdb server answers them in
    the 400's ``refused`` field)."""

    def __init__(
        self, refused: list[tuple[int, bytes, str]], message: str | None = None,
        describe: Callable[[bytes], str] = repr,
    ) -> None:
        self.refused = refused
        if message is None:
            shown = "; ".join(f"entry {i} (key {describe(key)}): {reason}" for i, key, reason in refused[:3])
            more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
            entries = "1 entry" if len(refused) == 1 else f"{len(refused)} entries"
            message = f"{entries} refused, nothing applied: {shown}{more}"
        super().__init__(message)


class Forbidden(ClientException):
    """The volume is locked by another owner."""

    http_status = 403


class NotFound(ClientException):
    """The volume (or the service) does not exist."""

    http_status = 404


class MethodNotAllowed(ClientException):
    http_status = 405


class Conflict(ClientException):
    http_status = 409


class PayloadTooLarge(ClientException):
    http_status = 413


class ServiceBusy(ClientException):
    http_status = 503


class ServerException(OioException):
    """The server answered something incoherent."""


class ServiceUnavailable(OioException):
    """No service could take the request."""


class VolumeException(OioException):
    """No rdir service is assigned to the volume."""


class OioNetworkException(OioException):
    """A network error reached no answer."""


class OioTimeout(OioNetworkException):
    pass


class OioConnectionException(OioNetworkException):
    pass


class OioProtocolError(OioNetworkException):
    pass


_BY_STATUS = {
    cls.http_status: cls
    for cls in (BadRequest, Forbidden, NotFound, MethodNotAllowed, Conflict, PayloadTooLarge, ServiceBusy)
}


def from_status(status: int, message: str) -> ClientException:
    """The exception OpenIO's client raises for an HTTP error ``status``."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        return ClientException(message, http_status=status, over_http=True)
    return cls(message, over_http=True)


# --------------------------------------------------------------------------
# SharedBase (winery's shard catalogue)
# --------------------------------------------------------------------------
#
# They are ValueErrors, as winery raises ValueError in the same places, so
# code written against winery keeps catching them.


class ShardNotFound(RdirdbError, ValueError):
    """No shard has this name (or id)."""


class ShardBusy(RdirdbError, ValueError):
    """The shard exists but another transaction holds its row; retry later."""


class ShardExists(RdirdbError, ValueError):
    """A shard with this name already exists."""


class FencingError(RdirdbError, ValueError):
    """This SharedBase no longer holds the shard it was acting on.

    Raised instead of writing into (or releasing) a shard that another
    process has taken over; nothing was written.
    """


class SchemaVersionError(RdirdbError):
    """The database was not created for this version of the SharedBase schema."""
