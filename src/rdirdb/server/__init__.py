"""The rdir HTTP server: OpenIO's rdir wire protocol over the embedded store.

``rdirdb serve`` (or ``python -m rdirdb.server serve``) runs it; see docs/server.md.
"""
