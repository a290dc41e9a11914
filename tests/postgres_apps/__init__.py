"""Three small apps on a real PostgreSQL pair, for tests/test_postgres_routing.py: Flask, FastAPI, Django.

Each reads and writes one table (``items``) and runs behind litefs-route's
middleware with ``source="postgres"``: ``$DATABASE_URL`` is the local server
(the primary in the primary region, the standby elsewhere), ``$PRIMARY_REGION``
and ``$FLY_REGION`` say where it runs, ``$FLY_MACHINE_ID`` names the instance,
``$LITEFS_ROUTE_JSON`` holds more of the middleware's options. Same routes in all three:

``POST /items`` (``name``)
    Inserts a row; answers ``{"id": ..., "instance": ...}``.
``GET /items``
    Every row: ``{"items": [{"id", "name", "instance"}...], "instance": ...}``.
``GET /oops?name=...``
    A GET whose handler writes (the read-only safety net's case): on a
    standby the INSERT fails with SQLSTATE 25006, and the error propagates.
``GET /boom``
    A real bug (RuntimeError): the witness that errors still reach the log.
``GET /state``
    What the middleware is doing: reads waiting for their LSN, and its counters.
``GET /health``
    The middleware's own health check (``health_path``).
"""
