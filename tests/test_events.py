"""LiteFS's event stream: the parser (one table) and the reader, on real LiteFS."""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from typing import TYPE_CHECKING

import pytest

from litefs_route._events import (
    EventStreamClosed,
    Init,
    LiteFSEvent,
    PrimaryChange,
    Quiet,
    Tx,
    Unusable,
    node_state,
    parse_event,
    read_events,
)
from litefs_route._mount import Role, read_position
from litefs_route_devcluster import free_port
from tests.support import wait_until

if TYPE_CHECKING:
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

TX = b'{"type":"tx","db":"app.db","data":{"txID":"0000000000000027","postApplyChecksum":"83b05248774ce767",'
TX_TAIL = b'"pageSize":4096,"commit":2,"timestamp":"2026-12-02T00:00:00Z"}}\n'

PARSED = [
    ("init-replica", b'{"type":"init","data":{"isPrimary":false,"hostname":"node1"}}\n', Init(False, "node1")),
    ("init-primary-no-hostname", b'{"type":"init","data":{"isPrimary":true}}\n', Init(True, None)),
    ("change-no-primary-omitted", b'{"type":"primaryChange","data":{"isPrimary":false}}', PrimaryChange(False, None)),
    (
        "change-no-primary-empty",
        b'{"type":"primaryChange","data":{"isPrimary":false,"hostname":""}}',
        PrimaryChange(False, None),
    ),
    (
        "change-to-node3",
        b'{"type":"primaryChange","data":{"isPrimary":false,"hostname":"node3"}}',
        PrimaryChange(False, "node3"),
    ),
    ("tx", TX + TX_TAIL, Tx("app.db", 0x27, 0x83B05248774CE767)),
    ("unknown-type", b'{"type":"halt","data":{}}', None),
    ("blank", b"\n", None),
    ("not-json", b"{nope", Unusable("a line that is not JSON")),
    ("deeply-nested", b"[" * 4000, Unusable("a line that is not JSON")),
    ("not-an-object", b"[1,2]", Unusable("a line that is not a JSON object")),
    ("no-data", b'{"type":"init"}', Unusable("a init event without data")),
    (
        "hostile-hostname",
        b'{"type":"primaryChange","data":{"isPrimary":false,"hostname":"a\\r\\nX-Evil: 1"}}',
        Unusable("a primaryChange event whose hostname is not a host name"),
    ),
    (
        "is-primary-not-bool",
        b'{"type":"init","data":{"isPrimary":"yes","hostname":"node1"}}',
        Unusable("a init event with malformed fields"),
    ),
    (
        "tx-short-txid",
        TX.replace(b"0000000000000027", b"27") + TX_TAIL,
        Unusable("a tx event with a malformed TXID or checksum"),
    ),
    (
        "tx-uppercase-txid",
        TX.replace(b"0000000000000027", b"00000000000000AB") + TX_TAIL,
        Unusable("a tx event with a malformed TXID or checksum"),
    ),
    (
        "tx-db-with-slash",
        TX.replace(b'"app.db"', b'"../etc/passwd"') + TX_TAIL,
        Unusable("a tx event whose database is not a file name"),
    ),
    (
        "tx-no-db",
        TX.replace(b'"db":"app.db",', b"") + TX_TAIL,
        Unusable("a tx event whose database is not a file name"),
    ),
    (
        "huge-line",
        b'{"type":"init","data":{"isPrimary":false,"hostname":"' + b"a" * 5000 + b'"}}',
        Unusable("a line over 4096 bytes"),
    ),
]


@pytest.mark.parametrize(("line", "expected"), [c[1:] for c in PARSED], ids=[c[0] for c in PARSED])
def test_parse_event(line: bytes, expected: LiteFSEvent | Unusable | None) -> None:
    assert parse_event(line) == expected


@pytest.mark.parametrize(
    ("event", "role", "primary"),
    [
        (Init(True, None), Role.PRIMARY, "me"),
        (Init(False, "node1"), Role.REPLICA, "node1"),
        (Init(False, "me"), Role.PRIMARY, "me"),
        (PrimaryChange(False, None), Role.NO_PRIMARY, None),
    ],
    ids=["primary", "replica", "names-this-instance", "no-primary"],
)
def test_node_state_from_an_event(event: Init | PrimaryChange, role: Role, primary: str | None) -> None:
    state = node_state(event, "me")
    assert (state.role, state.primary_id, state.litefs_seen) == (role, primary, True)


def test_an_unreachable_api_raises_at_once() -> None:
    with pytest.raises(ConnectionRefusedError):
        next(read_events(f"http://127.0.0.1:{free_port()}", timeout=5))


@pytest.mark.litefs
def test_read_events_on_real_litefs(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """init, a tx per commit in each database of the mount, primaryChange, and the end of the stream."""
    cluster = litefs_real_cluster(instances=3, lease="consul")
    assert next(read_events(cluster.nodes["node1"].api_url)) == Init(True, None)

    events: queue.Queue[LiteFSEvent | Quiet | BaseException] = queue.Queue()

    def read() -> None:
        try:
            for event in read_events(cluster.nodes["node2"].api_url, timeout=None):
                events.put(event)
        except BaseException as exc:  # the end of the stream is what this thread reports
            events.put(exc)

    def next_of(kind: type[LiteFSEvent]) -> LiteFSEvent:
        while True:
            item = events.get(timeout=20)
            assert not isinstance(item, BaseException), item
            if isinstance(item, kind):
                return item

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first = next_of(Init)
    assert isinstance(first, Init)
    assert node_state(first, "node2").primary_id == "node1"

    # Two databases in one mount: each commit is a tx naming its database, with the TXID -pos then shows.
    for database in ("app.db", "cache.db"):
        with sqlite3.connect(cluster.db_path("node1", database)) as db:
            db.execute("CREATE TABLE t (v TEXT)")
        db.close()
        target = cluster.wait_replicated(database=database)["node2"]
        seen: list[Tx] = []
        while not seen or seen[-1].txid < target:
            tx = next_of(Tx)
            assert isinstance(tx, Tx)
            seen.append(tx)
        assert {tx.database for tx in seen} == {database}
        position = read_position(cluster.nodes["node2"].mount_dir, database)
        assert position is not None
        assert (seen[-1].txid, seen[-1].checksum) == (position.txid, position.checksum)

    cluster.promote("node3")
    change = next_of(PrimaryChange)
    while not (isinstance(change, PrimaryChange) and change.primary == "node3"):
        change = next_of(PrimaryChange)
    assert node_state(change, "node2").primary_id == "node3"

    # The stream killed mid-flight: the reader ends with a connection error, never hangs.
    cluster.kill_node("node2")
    while not isinstance(item := events.get(timeout=20), BaseException):
        pass
    assert isinstance(item, EventStreamClosed | ConnectionResetError), repr(item)
    reader.join(10)
    assert not reader.is_alive()


@pytest.mark.litefs
def test_waits_follow_the_stream_and_fall_back_to_polling(
    litefs_real_cluster: LiteFSClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """wait_for_txid / wait_for_primary on the stream where it is up, on the mount where it is not."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from litefs_route._ops.waits import wait_for_primary, wait_for_txid

    cluster = litefs_real_cluster(instances=2, lease="consul")
    node2 = cluster.nodes["node2"]
    with sqlite3.connect(cluster.db_path("node1")) as db:
        db.execute("CREATE TABLE t (v TEXT)")
    db.close()
    target = cluster.wait_replicated()["node2"] + 1
    caplog.set_level(logging.INFO, logger="litefs_route")
    with ThreadPoolExecutor(2) as pool:
        on_stream = pool.submit(wait_for_txid, node2.mount_dir, "app.db", target, 20, api_url=node2.api_url)
        polling = pool.submit(
            wait_for_txid, node2.mount_dir, "app.db", target, 20, api_url=f"http://127.0.0.1:{free_port()}"
        )
        # The stream is up (its init arrived, -pos was read once): only now commit.
        wait_until(lambda: "waiting on LiteFS's event stream" in caplog.text, what="the stream to come up")
        assert not on_stream.done()
        with sqlite3.connect(cluster.db_path("node1")) as db:
            db.execute("INSERT INTO t VALUES ('x')")
        db.close()
        assert on_stream.result(20).txid >= target
        assert polling.result(20).txid >= target
    assert "is not usable" in caplog.text  # the unreachable API: polled instead
    expected = read_position(node2.mount_dir, "app.db")
    assert expected is not None
    assert expected.txid >= target

    with ThreadPoolExecutor(1) as pool:
        becoming_primary = pool.submit(
            wait_for_primary, node2.mount_dir, 30, this_node=True, instance_id="node2", api_url=node2.api_url
        )
        cluster.promote("node2")
        state = becoming_primary.result(30)
    assert (state.role, state.primary_id) == (Role.PRIMARY, "node2")
    assert caplog.text.count("waiting on LiteFS's event stream") == 2  # the TXID wait and this one


def test_a_stream_that_sends_an_unusable_line_is_ended() -> None:
    """A primaryChange that cannot be read is never skipped: the reader ends the stream (and its user falls back)."""
    lines = [
        b'{"type":"init","data":{"isPrimary":false,"hostname":"node1"}}\n',
        b'{"type":"primaryChange","data":{"isPrimary":false,"hostname":"a b"}}\n',
    ]
    url = _serve_once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b"".join(lines))
    events = read_events(url, timeout=5)
    assert next(events) == Init(False, "node1")
    with pytest.raises(EventStreamClosed, match="hostname is not a host name"):
        next(events)


def _serve_once(response: bytes) -> str:
    """A one-shot HTTP server on 127.0.0.1 that answers any request with *response*; its URL."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(65536)
            conn.sendall(response)
            conn.recv(1)  # until the client closes

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_events_sent_with_the_last_chunk_are_not_lost() -> None:
    """LiteFS closing a slow subscriber sends the buffered events and the end together: each is read first."""
    init = b'{"type":"init","data":{"isPrimary":false,"hostname":"node1"}}\n'
    tx = TX + TX_TAIL
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in (init, tx)) + b"0\r\n\r\n"
    url = _serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    events = read_events(url, timeout=5)
    assert [next(events), next(events)] == [Init(False, "node1"), Tx("app.db", 0x27, 0x83B05248774CE767)]
    with pytest.raises(EventStreamClosed, match="ended"):
        next(events)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"clusterID":"x","isPrimary":false,"primary":{"hostname":"node1"}}', Init(False, "node1")),
        (b'{"isPrimary":true,"primary":{"hostname":"node2"}}', Init(True, None)),
        (b'{"isPrimary":false,"primary":{}}', Init(False, None)),
        (b'{"primary":true,"candidate":true}', None),  # LiteFS v0.5.5/v0.5.6
        (b'{"isPrimary":false,"primary":{"hostname":"a b"}}', None),
        (b"[" * 5000, None),
    ],
    ids=["replica", "primary-names-itself", "no-primary", "litefs-0.5.6", "hostile-hostname", "not-json"],
)
def test_read_info(body: bytes, expected: Init | None) -> None:
    from litefs_route._events import read_info

    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    assert read_info(_serve_once(head + body)) == expected


@pytest.mark.litefs
def test_litefs_metrics_name_each_databases_txid(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """``litefs_db_txid`` in /metrics is what -pos shows (the stream's quiet check compares them)."""
    from litefs_route._events import read_txids

    cluster = litefs_real_cluster(instances=2, lease="static")
    for database in ("app.db", "cache.db"):
        with sqlite3.connect(cluster.db_path("node1", database)) as db:
            db.execute("CREATE TABLE t (v TEXT)")
            db.execute("INSERT INTO t VALUES ('x')")
        db.close()
        cluster.wait_replicated(database=database)
    for node in ("node1", "node2"):
        assert read_txids(cluster.nodes[node].api_url) == {
            database: cluster.position(node, database) for database in ("app.db", "cache.db")
        }


def _serve_dripping(head_and_init: bytes, drip: bytes, then: bytes) -> str:
    """A LiteFS API stand-in: the head and init, then *drip* one byte at a time (20 ms apart), then *then*."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(65536)
            conn.sendall(head_and_init)
            stop = threading.Event()
            for byte in drip:
                if stop.wait(0.02):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the reader went away
            with contextlib.suppress(OSError):
                conn.sendall(then)
                conn.recv(1)

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize(
    "drip",
    [b'{"type":"tx",' + b" " * 200, b"\n" * 200],
    ids=["a-partial-line-byte-by-byte", "blank-lines"],
)
def test_a_dripping_stream_is_still_quiet(drip: bytes) -> None:
    """Bytes that make no event are silence: the quiet check runs while they drip (issue 24, 5).

    The drip takes 4 s and ends in an event; the reader must say Quiet
    (after quiet_after, 0.2 s) before that event, however busy the machine.
    """
    init = b'{"type":"init","data":{"isPrimary":false,"hostname":"node1"}}\n'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
    tx = TX + TX_TAIL
    then = tx if drip.startswith(b"\n") else tx[len(b'{"type":"tx",') :]
    url = _serve_dripping(head + init, drip, then)
    events = read_events(url, timeout=None, connect_timeout=5, quiet_after=0.2)
    try:
        assert next(events) == Init(False, "node1")
        assert next(events) == Quiet()
    finally:
        events.close()
