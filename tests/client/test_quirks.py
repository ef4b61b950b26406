"""One test group per quirk of §11 that the client decides (docs/compatibility.md).

Quirks 2, 4, 5, 14 are about the HTTP server and have no case here.
"""

from __future__ import annotations

import os
import threading

import pytest

from rdirdb import errors
from rdirdb.errors import BadRequest, Forbidden, NotFound

from .conftest import entry, key, make_meta2_record, make_record


def fetch(client, vol, **kwargs):
    return list(client.chunk_fetch(vol, **kwargs))


# 1. Empty or hostile volume ids.

EMPTY_VOLUME_CALLS = {
    "create": lambda c: c.create(""),
    "chunk_push": lambda c: c.chunk_push("", "C", "X", "K", "p", 1, create=True),
    "chunk_push_batch": lambda c: c.chunk_push_batch("", [make_record()], create=True),
    "chunk_delete": lambda c: c.chunk_delete("", "C", "X", "K"),
    "chunk_fetch": lambda c: list(c.chunk_fetch("")),
    "status": lambda c: c.status(""),
    "admin_incident_set": lambda c: c.admin_incident_set("", 1, create=True),
    "admin_lock": lambda c: c.admin_lock("", "who", create=True),
    "admin_clear": lambda c: c.admin_clear(""),
    "meta2_index_push": lambda c: c.meta2_index_push("", "a/b/c", "CID", 0),
    "meta2_index_fetch": lambda c: c.meta2_index_fetch(""),
}


@pytest.mark.parametrize("call", EMPTY_VOLUME_CALLS.values(), ids=EMPTY_VOLUME_CALLS)
@pytest.mark.embedded_only
def test_empty_volume_id_is_rejected(client, call):
    with pytest.raises(BadRequest):
        call(client)
    assert client.backend.store.volumes("rawx") == client.backend.store.volumes("meta2") == []


@pytest.mark.parametrize("volume", ["../escape", "/abs/path", ".hidden", "a/../../b"])
@pytest.mark.embedded_only
def test_volume_ids_stay_inside_the_store(client, tmp_path, volume):
    rec = make_record()
    client.chunk_push_batch(volume, [rec], create=True)
    assert fetch(client, volume) == [entry(rec)]
    assert client.backend.store.volumes() == [volume]
    assert sorted(os.listdir(tmp_path)) == ["rdir"]


# 3. Chunk pushes need an existing volume (unless create); meta2 pushes create it.


def test_chunk_push_needs_the_volume(client, vol):
    with pytest.raises(NotFound):
        client.chunk_push(vol, "C", "X", "K", "p", 1)
    client.chunk_push(vol, "C", "X", "K", "p", 1, create=True)
    assert [e[:2] for e in fetch(client, vol)] == [("C", "K")]


def test_meta2_push_creates_the_volume(client, vol):
    rec = make_meta2_record()
    client.meta2_index_push(vol, rec["container_url"], rec["container_id"], rec["mtime"])
    assert client.meta2_index_fetch_all(vol) == [dict(rec, extra_data=None)]


def test_meta2_delete_needs_the_volume(client, vol):
    with pytest.raises(NotFound):
        client.meta2_index_delete(vol, "ns/a/c", "CID")


# 6. meta2 listings: exactly limit records, exact truncation, exact markers.


@pytest.fixture
def meta2_volume(client, vol):
    urls = [f"ns/acct/c{i:02d}" for i in range(10)]
    client.backend.meta2_push(
        vol, [{"container_url": u, "container_id": f"{i:064X}", "mtime": i} for i, u in enumerate(urls)]
    )
    return vol, urls


def urls_of(page):
    return [r["container_url"] for r in page["records"]]


@pytest.mark.parametrize("limit", [1, 3, 9, 10, 11])
def test_meta2_fetch_returns_limit_records(client, meta2_volume, limit):
    vol, urls = meta2_volume
    page = client.meta2_index_fetch(vol, limit=limit)
    assert urls_of(page) == urls[:limit]
    assert page["truncated"] is (limit < len(urls))


def test_meta2_marker_of_a_deleted_key_skips_nothing(client, meta2_volume):
    vol, urls = meta2_volume
    client.meta2_index_delete(vol, urls[3])
    assert urls_of(client.meta2_index_fetch(vol, marker=urls[3], limit=2)) == urls[4:6]


def test_meta2_marker_before_the_prefix_range(client, meta2_volume):
    vol, urls = meta2_volume
    page = client.meta2_index_fetch(vol, prefix="ns/acct/c0", marker="ns/a")
    assert urls_of(page) == urls


def test_meta2_fetch_all_pages_exactly(client, meta2_volume, requests):
    vol, urls = meta2_volume
    assert [r["container_url"] for r in client.meta2_index_fetch_all(vol, limit=5)] == urls
    assert requests["meta2_page"] == 2


def test_meta2_limit_is_capped(client, vol):
    records = [{"container_url": f"u/{i:06d}", "container_id": "C", "mtime": 0} for i in range(10_001)]
    client.backend.meta2_push(vol, records)
    assert len(client.meta2_index_fetch(vol, limit=20_000)["records"]) == 10_000
    assert len(client.meta2_index_fetch(vol, limit=0)["records"]) == 1000
    assert len(client.meta2_index_fetch(vol, limit=-5)["records"]) == 1000


# 7. Chunk markers are exact positions; an empty one is none.


def test_marker_that_prefixes_a_key_does_not_skip_it(client, vol):
    records = [make_record(container_id="C", chunk_id=c) for c in ("AB", "ABC", "B")]
    client.chunk_push_batch(vol, records, create=True)
    assert [e[1] for e in fetch(client, vol, start_after="C|AB")] == ["ABC", "B"]
    assert [e[1] for e in fetch(client, vol, start_after="C|A")] == ["AB", "ABC", "B"]


def test_marker_longer_than_a_canonical_key(client, vol):
    canonical = make_record(container_id="0" * 63 + "1", chunk_id="0" * 63 + "1")
    text = make_record(container_id="0" * 63 + "1", chunk_id="0" * 64 + "x")  # sorts just before
    client.chunk_push_batch(vol, [canonical, text], create=True)
    assert fetch(client, vol, limit=1) == [entry(text), entry(canonical)]


def test_empty_marker_is_no_marker(client, vol):
    records = sorted((make_record() for _ in range(3)), key=key)
    client.chunk_push_batch(vol, records, create=True)
    assert fetch(client, vol, start_after="") == [entry(r) for r in records]
    assert client.status(vol, marker="")["chunk"]["total"] == 3


def test_empty_meta2_marker_is_no_marker(client, meta2_volume):
    vol, urls = meta2_volume
    assert urls_of(client.meta2_index_fetch(vol, marker="")) == urls


def test_listing_order_is_the_text_order_of_the_key(client, vol):
    # "AB|x" sorts after "ABC|y" because '|' > 'C': the reference's key order.
    records = [make_record(container_id="AB", chunk_id="x"), make_record(container_id="ABC", chunk_id="y")]
    client.chunk_push_batch(vol, records, create=True)
    assert [e[0] for e in fetch(client, vol)] == ["ABC", "AB"]
    assert [e[0] for e in fetch(client, vol, container_id="AB")] == ["ABC", "AB"]
    assert [e[0] for e in fetch(client, vol, container_id="AB|")] == ["AB"]


# 8. The truncation marker is the key before the next match, maybe a filtered one.


def test_truncation_marker_precedes_the_next_match(client, vol):
    old, new, old2 = (make_record(container_id="C", chunk_id=c, mtime=m) for c, m in (("a", 1), ("b", 9), ("c", 2)))
    client.chunk_push_batch(vol, [old, new, old2], create=True)
    client.admin_incident_set(vol, 5)
    page, truncated, marker = client.backend.chunk_page(vol, prefix=None, marker=None, limit=1, rebuild=True)
    assert (list(page), truncated, marker) == ([entry(old)], True, "C|b")
    page, truncated, marker = client.backend.chunk_page(vol, prefix=None, marker=marker, limit=1, rebuild=True)
    assert (list(page), truncated) == ([entry(old2)], False)


def test_truncation_is_exact_when_filtered_records_follow(client, vol, requests):
    records = [make_record(container_id="C", chunk_id=c, mtime=m) for c, m in (("a", 1), ("b", 2), ("c", 9))]
    client.chunk_push_batch(vol, records, create=True)
    client.admin_incident_set(vol, 5)
    assert fetch(client, vol, rebuild=True, limit=2) == [entry(r) for r in records[:2]]
    assert requests["chunk_page"] == 1


# 9. Locks: same owner idempotent, others refused, atomic; clear releases.


def test_lock_is_idempotent_for_its_owner(client, vol):
    client.create(vol)
    client.admin_lock(vol, "me")
    client.admin_lock(vol, "me")
    assert client.admin_show(vol) == {"lock": "me"}


def test_lock_check_and_set_is_atomic(client, vol):
    client.create(vol)
    winners, barrier = [], threading.Barrier(16)

    def contend(who):
        barrier.wait()
        try:
            client.admin_lock(vol, who)
            winners.append(who)
        except Forbidden:
            pass

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert client.admin_show(vol) == {"lock": winners[0]}


def test_unlock_has_no_owner_check(client, vol):
    client.create(vol)
    client.admin_unlock(vol)
    client.admin_lock(vol, "me")
    client.admin_unlock(vol)
    assert client.admin_show(vol) == {}


def test_clear_releases_even_its_own_earlier_lock(client, vol):
    client.create(vol)
    client.admin_lock(vol, "admin_clear")
    client.admin_clear(vol)
    assert client.admin_show(vol) == {}


@pytest.mark.embedded_only
def test_failed_clear_writes_nothing_and_unlocks(client, vol, monkeypatch):
    rec = make_record()
    client.chunk_push_batch(vol, [rec], create=True)
    client.admin_incident_set(vol, 5)
    volume = client.backend.store.volume(vol)

    class Failing:
        def clear(self, **kwargs):
            raise errors.MapFullError("mdb_txn_commit", -30792, "full")

    monkeypatch.setattr(volume, "chunks", Failing())
    with pytest.raises(errors.MapFullError):
        client.admin_clear(vol, clear_all=True)
    monkeypatch.undo()
    assert client.admin_show(vol) == {"incident_date": "5"}
    assert fetch(client, vol) == [entry(rec)]


# 10. Clear always erases the incident date; repair rewrites records in place.


@pytest.mark.parametrize("flags", [{}, {"clear_all": True}, {"before_incident": True}, {"repair": True}])
def test_every_clear_erases_the_incident(client, vol, flags):
    client.create(vol)
    client.admin_incident_set(vol, 42)
    client.admin_clear(vol, **flags)
    assert client.admin_incident_get(vol) == 0
    assert "incident_date" not in client.admin_show(vol)


def test_repair_rewrites_in_place(client, vol):
    records = sorted((make_record(mtime=i) for i in range(5)), key=key)
    records.append(make_record(container_id="not-hex", chunk_id="http://vol/not|hex"))
    client.chunk_push_batch(vol, records, create=True)
    before = fetch(client, vol)
    assert client.admin_clear(vol, repair=True) == {"removed": 0, "repaired": 6, "errors": 0}
    assert fetch(client, vol) == before
    assert client.status(vol)["chunk"]["total"] == 6


# 11. mtime <= 0 reads back as 0 and is always "to rebuild".


@pytest.mark.parametrize("mtime", [0, -5])
def test_non_positive_mtime(client, vol, mtime):
    rec = make_record(mtime=mtime)
    client.chunk_push_batch(vol, [rec], create=True)
    assert fetch(client, vol)[0][2]["mtime"] == 0
    client.admin_incident_set(vol, 1)
    assert fetch(client, vol, rebuild=True) == [entry(rec)]
    assert client.status(vol)["chunk"] == {"total": 1, "to_rebuild": 1}


# 12. An incident date <= 0 is no incident; 0 when unset.


@pytest.mark.parametrize("date", [0, -1])
def test_non_positive_incident_is_no_incident(client, vol, date):
    client.chunk_push_batch(vol, [make_record(mtime=0)], create=True)
    assert client.admin_incident_get(vol) == 0
    client.admin_incident_set(vol, date)
    assert client.admin_incident_get(vol) == date
    assert fetch(client, vol, rebuild=True) == []
    assert client.status(vol)["chunk"] == {"total": 1}


def test_incident_date_accepts_floats_and_strings(client, vol):
    client.create(vol)
    client.admin_incident_set(vol, 12.9)
    assert client.admin_incident_get(vol) == 12
    client.admin_incident_set(vol, "13.5")
    assert client.admin_incident_get(vol) == 13
    for bad in ("soon", float("inf"), 1 << 63, -(1 << 63) - 1):
        with pytest.raises(BadRequest):
            client.admin_incident_set(vol, bad)
    assert client.admin_incident_get(vol) == 13
    client.admin_incident_set(vol, (1 << 63) - 1)
    assert client.status(vol)["chunk"] == {"total": 0, "to_rebuild": 0}


# 13. admin_show returns strings.


def test_admin_show_values_are_strings(client, vol):
    client.create(vol)
    client.admin_incident_set(vol, 1234)
    client.admin_lock(vol, "rebuilder on host")
    assert client.admin_show(vol) == {"incident_date": "1234", "lock": "rebuilder on host"}


# 15. Oversized ids are refused, nothing written (never truncated).

LIMITS = {"container_id": 64, "content_id": 64, "chunk_id": 511, "path": 1087}


@pytest.mark.parametrize("field", list(LIMITS))
def test_ids_at_the_limit_are_kept_whole(client, vol, field):
    rec = make_record(**{field: "é" * (LIMITS[field] // 2) + "A" * (LIMITS[field] % 2)})
    client.chunk_push_batch(vol, [rec], create=True)
    assert fetch(client, vol) == [entry(rec)]


@pytest.mark.parametrize("field", LIMITS)
def test_oversized_ids_are_refused(client, vol, field):
    client.create(vol)
    good = make_record()
    bad = make_record(**{field: "A" * (LIMITS[field] - 1) + "é"})  # one byte too many
    with pytest.raises(BadRequest):
        client.chunk_push_batch(vol, [good, bad])
    assert fetch(client, vol) == []


def test_long_container_urls_are_kept_whole(client, vol):
    url = "NS/acc/" + "é" * 500  # odd length before the 478-byte split
    client.meta2_index_push(vol, url, "CID", 1)
    assert [r["container_url"] for r in client.meta2_index_fetch_all(vol)] == [url]


def test_long_keys_page_exactly_once(client, vol):
    # Key texts longer than the engine's 478-byte stored prefix that share it are
    # ordered by digest, not by text (LMDB keys hold 511 bytes): paging still
    # returns each record once, and prefixes are limited to 478 bytes.
    stem = "C|" + "x" * 490
    records = [make_record(container_id="C", chunk_id=stem[2:] + c) for c in "abcdefgh"]
    client.chunk_push_batch(vol, records, create=True)
    listed = fetch(client, vol)
    assert sorted(listed) == sorted(entry(r) for r in records)
    assert fetch(client, vol, limit=1) == listed
    assert fetch(client, vol, start_after=f"C|{listed[3][1]}") == listed[4:]
    with pytest.raises(BadRequest):
        fetch(client, vol, container_id=stem)
    assert fetch(client, vol, container_id=stem[:478]) == listed


# Order of checks: the records first, then the volume (as the reference server).


@pytest.mark.embedded_only
def test_invalid_batch_for_an_unknown_volume_is_a_bad_request(client, vol):
    with pytest.raises(BadRequest):
        client.chunk_push_batch(vol, [make_record(container_id="a|b")])
    with pytest.raises(BadRequest):
        client.chunk_push_batch(vol, [make_record(container_id="a|b")], create=True)
    assert client.backend.store.volumes() == []  # nothing created
    with pytest.raises(NotFound):
        client.chunk_push_batch(vol, [make_record()])


# 16. Client quirks.


def test_empty_batches_are_no_ops(client, vol):
    with pytest.raises(NotFound):
        client.chunk_push_batch(vol, [])
    client.create(vol)
    client.chunk_push_batch(vol, [])
    client.chunk_delete_batch(vol, [])
    assert fetch(client, vol) == []


def test_transport_kwargs_are_not_stored(client, vol):
    client.meta2_index_push(vol, "ns/a/c", "CID", 3, reqid="r", write_quorum=2, headers={})
    assert client.meta2_index_fetch_all(vol) == [
        {"container_url": "ns/a/c", "container_id": "CID", "mtime": 3, "extra_data": None}
    ]


def test_exceptions_keep_their_status(client, vol):
    with pytest.raises(NotFound) as not_found:
        client.status(vol)
    client.create(vol)
    client.admin_lock(vol, "a")
    with pytest.raises(Forbidden) as forbidden:
        client.admin_lock(vol, "b")
    with pytest.raises(BadRequest) as bad:
        client.create("")
    assert (not_found.value.http_status, forbidden.value.http_status, bad.value.http_status) == (404, 403, 400)


def test_separator_in_ids(client, vol):
    rec = make_record(chunk_id="a|b|c")
    client.chunk_push_batch(vol, [rec], create=True)
    assert fetch(client, vol) == [entry(rec)]
    with pytest.raises(BadRequest):
        client.chunk_push_batch(vol, [make_record(container_id="a|b")])
    assert fetch(client, vol) == [entry(rec)]
