"""rdirdb._count has no Python API: its counts are reached through rdirdb._rdir."""
