"""OpenIO's reverse directory (rdir): the client facade and what it stands on.

Layers, each importing only those below it::

    client      RdirClient: OpenIO's API, paging, retries
    dispatcher  RdirDispatcher: which rdir servers hold which volume
    embedded    EmbeddedBackend: answers from a Store in this process
    remote      RemoteBackend: answers from rdir servers over HTTP
    backend     the RdirBackend interface, page limits, record shapes
    store       Store / Volume: one LMDB environment per volume
    registry    the service registry (JSON file or PostgreSQL)
"""
