"""Subcommands that work on an embedded store directly: migration, dumps, statistics.

* :mod:`rdirdb.tools.leveldb`: ``import-leveldb``, from an OpenIO rdir data directory;
* :mod:`rdirdb.tools.dump`: ``export`` and ``import``, checksummed JSON lines;
* :mod:`rdirdb.tools.stats`: ``stats``, LMDB's page statistics per volume;
* :mod:`rdirdb.tools.common`: what they share (flags, output, the staging area).
"""
