"""The public names of the package: pinned, so that removing one is a decision."""

from __future__ import annotations

import rdirdb

PUBLIC = [
    "Cursor",
    "Environment",
    "RdirClient",
    "RdirDispatcher",
    "ShardState",
    "SharedBase",
    "SignatureState",
    "TemporaryShardLocker",
    "Transaction",
    "__version__",
    "errors",
    "lmdb_version",
]


def test_all_is_pinned():
    assert sorted(rdirdb.__all__) == PUBLIC


def test_every_public_name_imports():
    for name in rdirdb.__all__:
        assert getattr(rdirdb, name) is not None, name
    from rdirdb import RdirClient, SharedBase  # the facades, imported on first use

    assert RdirClient.__module__ == "rdirdb.rdir.client"
    assert SharedBase.__module__ == "rdirdb.sharedbase.base"
