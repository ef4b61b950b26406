"""Random sequences of client calls agree with the plain-Python model after every step."""

from __future__ import annotations

import collections
import os
import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rdirdb.rdir.client import RdirClient
from rdirdb.errors import BadRequest

from .conftest import PAGE_REQUESTS
from .model import Model

VOLUMES = st.sampled_from(["v1", "v2", "v/../3"])
# Canonical ids (64 hex) and text ids are stored apart by the engine; their
# listings must still merge in the text order of "cid|chunk".
HEX = ["0" * 64, "0" * 63 + "1", "A" * 64, "F" * 64]
CIDS = st.sampled_from(HEX + ["A", "AB", "ABC", "B", "é"])
# "0" * 64 + "x": a canonical id followed by more text, as a marker it must not
# skip the canonical records right after it.
CHUNKS = st.sampled_from(HEX + ["a", "a|b", "ab", "b", "0" * 63 + "x", "0" * 64 + "x"])
PREFIXES = st.sampled_from([None, "", "A", "AB", "AB|", "0", "0" * 64 + "|", "é|", "z"])
MARKERS = st.one_of(
    st.sampled_from([None, "", "A", "AB|a", "AB|", "0" * 64 + "|" + "0" * 64, "B|zz", "~"]),
    st.builds(lambda c, k: f"{c}|{k}", CIDS, CHUNKS),
)
LIMITS = st.sampled_from([None, 0, 1, 2, 3, 5])
DATES = st.integers(-2, 12)
OWNERS = st.sampled_from(["", "me", "you", "admin_clear"])
URLS = st.sampled_from(["a/b/c", "a/b/cd", "a/b/c/d", "a/c/x", "b/x/y", "é/x/y"])


@st.composite
def records(draw, valid=True):
    record = {
        "container_id": draw(CIDS),
        "content_id": draw(st.sampled_from(["X", "0" * 32, "ABC", ""])),
        "chunk_id": draw(CHUNKS),
        "mtime": draw(st.integers(-3, 12)),
        "path": draw(st.sampled_from(["p", "", "a/b"])),
        "version": draw(st.integers(-1, 3)),
    }
    if not valid:
        field, bad = draw(st.sampled_from([
            ("container_id", "A|B"), ("container_id", "A" * 65), ("chunk_id", "x\0"),
            ("path", None), ("mtime", "1"), ("content_id", "C" * 65),
        ]))
        record[field] = bad
    return record


class RdirMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="rdir-stateful-")
        self.client = RdirClient({"db_path": self.dir, "db_sync": False})
        self.model = Model()
        self.pages: collections.Counter = collections.Counter()
        for name in PAGE_REQUESTS:
            original = getattr(self.client.backend, name)

            def counted(*args, _original=original, _name=name, **kwargs):
                self.pages[_name] += 1
                return _original(*args, **kwargs)

            setattr(self.client.backend, name, counted)

    def teardown(self) -> None:
        self.client.close()
        shutil.rmtree(self.dir)

    def agree(self, client_call, model_call):
        """Both calls return the same thing or raise the same class of error."""
        try:
            expected = model_call()
        except Exception as exc:  # the model raises the client's error classes
            try:
                client_call()
            except Exception as got:
                assert type(got) is type(exc), (got, exc)
            else:
                raise AssertionError(f"client did not raise {exc!r}")
            return None
        got = client_call()
        assert got == expected
        return got

    def paged(self, name, client_call, model_call):
        """A listing: same result and the model's page count."""
        self.pages.clear()
        try:
            expected, pages = model_call()
        except Exception:
            return self.agree(client_call, model_call)
        assert client_call() == expected
        assert self.pages[name] == pages

    # -- rules ----------------------------------------------------------------

    @rule(volume=VOLUMES)
    def create(self, volume):
        self.agree(lambda: self.client.create(volume), lambda: self.model.create(volume))

    @rule(volume=VOLUMES, batch=st.lists(records(), max_size=5), create=st.booleans())
    def push(self, volume, batch, create):
        self.agree(
            lambda: self.client.chunk_push_batch(volume, batch, create=create),
            lambda: self.model.chunk_push_batch(volume, batch, create),
        )

    @rule(volume=VOLUMES, batch=st.lists(records(), max_size=3), bad=records(valid=False), create=st.booleans())
    def push_invalid(self, volume, batch, bad, create):
        batch = batch + [bad]
        self.agree(
            lambda: self.client.chunk_push_batch(volume, batch, create=create),
            lambda: self.model.chunk_push_batch(volume, batch, create),
        )

    @rule(volume=VOLUMES, cid=CIDS, chunk=CHUNKS, data=st.data())
    def delete(self, volume, cid, chunk, data):
        keys = [(cid, chunk)]
        vol = self.model.rawx.get(volume)
        if vol and vol.chunks:
            keys += data.draw(st.lists(st.sampled_from(sorted(vol.chunks)), max_size=3))
        self.agree(
            lambda: self.client.chunk_delete_batch(volume, keys),
            lambda: self.model.chunk_delete_batch(volume, keys),
        )

    def marker(self, data, volume):
        """A marker: an arbitrary text or, often, the key of a stored record."""
        vol = self.model.rawx.get(volume)
        keys = [f"{cid}|{chunk}" for cid, chunk in sorted(vol.chunks)] if vol else []
        if keys and data.draw(st.booleans()):
            return data.draw(st.sampled_from(keys))
        return data.draw(MARKERS)

    @rule(volume=VOLUMES, limit=LIMITS, rebuild=st.booleans(), prefix=PREFIXES, data=st.data())
    def fetch(self, volume, limit, rebuild, prefix, data):
        marker = self.marker(data, volume)
        self.paged(
            "chunk_page",
            lambda: list(self.client.chunk_fetch(
                volume, limit=limit, rebuild=rebuild, container_id=prefix, start_after=marker
            )),
            lambda: self.model.chunk_fetch(volume, limit, rebuild, prefix, marker),
        )

    @rule(volume=VOLUMES, limit=LIMITS, prefix=PREFIXES, data=st.data())
    def status(self, volume, limit, prefix, data):
        marker = self.marker(data, volume)
        self.paged(
            "status_page",
            lambda: self.client.status(volume, max=limit, prefix=prefix, marker=marker),
            lambda: self.model.status(volume, limit, prefix, marker),
        )

    @rule(volume=VOLUMES, date=DATES, create=st.booleans())
    def incident_set(self, volume, date, create):
        self.agree(
            lambda: self.client.admin_incident_set(volume, date, create=create),
            lambda: self.model.incident_set(volume, date, create),
        )

    @rule(volume=VOLUMES)
    def incident_get(self, volume):
        self.agree(lambda: self.client.admin_incident_get(volume), lambda: self.model.incident_get(volume))

    @rule(volume=VOLUMES, who=OWNERS, create=st.booleans())
    def lock(self, volume, who, create):
        self.agree(
            lambda: self.client.admin_lock(volume, who, create=create),
            lambda: self.model.lock(volume, who, create),
        )

    @rule(volume=VOLUMES)
    def unlock(self, volume):
        self.agree(lambda: self.client.admin_unlock(volume), lambda: self.model.unlock(volume))

    @rule(volume=VOLUMES, clear_all=st.booleans(), before_incident=st.booleans(), repair=st.booleans())
    def clear(self, volume, clear_all, before_incident, repair):
        self.agree(
            lambda: self.client.admin_clear(volume, clear_all, before_incident, repair),
            lambda: self.model.clear(volume, clear_all, before_incident, repair),
        )

    @rule(volume=VOLUMES, url=URLS, cid=CIDS, mtime=st.integers(0, 9), extra=st.sampled_from([None, "", "x"]))
    def meta2_push(self, volume, url, cid, mtime, extra):
        self.agree(
            lambda: self.client.meta2_index_push(volume, url, cid, mtime, extra_data=extra),
            lambda: self.model.meta2_push(volume, url, cid, mtime, extra),
        )

    @rule(volume=VOLUMES, url=URLS)
    def meta2_delete(self, volume, url):
        self.agree(
            lambda: self.client.meta2_index_delete(volume, url, "CID"),
            lambda: self.model.meta2_delete(volume, url),
        )

    @rule(volume=VOLUMES, prefix=st.sampled_from([None, "", "a/", "a/b/c", "b"]),
          marker=st.one_of(st.none(), URLS, st.just("")), limit=LIMITS)
    def meta2_fetch(self, volume, prefix, marker, limit):
        self.agree(
            lambda: self.client.meta2_index_fetch(volume, prefix=prefix, marker=marker, limit=limit),
            lambda: self.model.meta2_fetch(volume, prefix, marker, limit),
        )

    @precondition(lambda self: self.model.meta2)
    @invariant()
    def same_meta2_state(self):
        for volume, records in self.model.meta2.items():
            assert self.client.meta2_index_fetch_all(volume, limit=2) == [records[u] for u in sorted(records)]

    @precondition(lambda self: self.model.rawx)
    @invariant()
    def same_state(self):
        for volume in self.model.rawx:
            assert list(self.client.chunk_fetch(volume, limit=3)) == self.model.chunk_fetch(volume)[0]
            assert self.client.admin_show(volume) == self.model.show(volume)


TestRdirClientStateful = RdirMachine.TestCase
TestRdirClientStateful.settings = settings(
    # Bounded for the suite; RDIRDB_STATEFUL_EXAMPLES=5000 for a long hunt.
    max_examples=int(os.environ.get("RDIRDB_STATEFUL_EXAMPLES", 200)),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
