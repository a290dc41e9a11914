"""The ops wing, one module per job (public names are re-exported by :mod:`litefs_route`).

- :mod:`.waits`: wait for a primary, for sync, for a TXID, for a schema version;
- :mod:`.halt`: LiteFS's HALT lock, to write from a replica;
- :mod:`.connections`: the SQLite connections the registry and the steps use;
- :mod:`.registry`: which release each instance runs;
- :mod:`.steps`: after-release steps, once per release for the cluster;
- :mod:`.lease`: ``promote``, the lease call.
"""
