"""The typed fields of a request's JSON body, for OpenIO's routes and rdirdb's own."""

from __future__ import annotations

from typing import Any, Callable

from rdirdb.errors import BadRequest


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON true/false are bools, which must not pass as ints


_TYPES: dict[type, Callable[[Any], bool]] = {
    str: lambda v: type(v) is str,
    int: _is_int,
    bool: lambda v: type(v) is bool,
    list: lambda v: type(v) is list,
}


def field(obj: Any, name: str, kind: type, *, mandatory: bool = True) -> Any:
    """One typed field of a JSON object; absent or null is "missing" (a 400)."""
    if type(obj) is not dict:
        raise BadRequest("Not an object")
    value = obj.get(name)
    if value is None:
        if mandatory:
            raise BadRequest(f"Missing field [{name}]")
        return None
    if not _TYPES[kind](value):
        raise BadRequest(f"Invalid type for field [{name}]")
    return value
