"""The Consul stand-in on its own, through real HTTP on 127.0.0.1.

Requests are shaped as LiteFS's Go client (``hashicorp/consul/api`` v1.11.0)
sends them. Waits are bounded polls on a condition; the only timing
assertions are lower bounds (a lock-delay may end late on a slow machine,
never early). Exact TTL and lock-delay boundaries are checked with a fake
clock instead.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from litefs_route_devcluster import wait_for
from litefs_route_devcluster.consul import AGENT_NODE, MAX_BODY, ConsulStandIn

KEY = "litefs/primary"

# What LiteFS's leaser sends to /v1/session/create (CreateNoChecks with TTL 10s, lock-delay 1s).
LITEFS_SESSION = {"NodeChecks": [], "Name": "litefs", "Behavior": "delete", "LockDelay": "1000ms", "TTL": "10s"}


def local_client(url: str) -> httpx.Client:
    # Plain HTTP to 127.0.0.1: no TLS, so skip loading the CA bundle (about 50 ms per client).
    return httpx.Client(base_url=url, timeout=5, verify=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def consul() -> Iterator[ConsulStandIn]:
    with ConsulStandIn() as standin:
        yield standin


@pytest.fixture
def http(consul: ConsulStandIn) -> Iterator[httpx.Client]:
    with local_client(consul.url) as http_client:
        yield http_client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_consul(clock: FakeClock) -> Iterator[ConsulStandIn]:
    with ConsulStandIn(clock=clock) as standin:
        yield standin


@pytest.fixture
def fake_http(fake_consul: ConsulStandIn) -> Iterator[httpx.Client]:
    with local_client(fake_consul.url) as http_client:
        yield http_client


def create(http: httpx.Client, **fields: object) -> str:
    response = http.put("/v1/session/create", content=json.dumps(fields))
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["ID"]
    session_id = body["ID"]
    assert isinstance(session_id, str)
    uuid.UUID(session_id)
    return session_id


def boolean(response: httpx.Response) -> bool:
    assert response.status_code == 200, response.text
    result = response.json()
    assert isinstance(result, bool)
    return result


def acquire(http: httpx.Client, session_id: str, value: bytes = b"", key: str = KEY) -> bool:
    # Like the Go client: the value is the raw body, application/octet-stream.
    headers = {"Content-Type": "application/octet-stream"}
    return boolean(http.put(f"/v1/kv/{key}", params={"acquire": session_id}, content=value, headers=headers))


def release(http: httpx.Client, session_id: str, key: str = KEY) -> bool:
    return boolean(http.put(f"/v1/kv/{key}", params={"release": session_id}))


def get(http: httpx.Client, key: str = KEY) -> dict[str, object] | None:
    response = http.get(f"/v1/kv/{key}")
    assert int(response.headers["X-Consul-Index"]) > 0
    if response.status_code == 404:
        assert response.content == b""
        return None
    assert response.status_code == 200, response.text
    entries = response.json()
    assert isinstance(entries, list)
    assert len(entries) == 1
    entry = entries[0]
    assert isinstance(entry, dict)
    return entry


def renew(http: httpx.Client, session_id: str) -> httpx.Response:
    return http.put(f"/v1/session/renew/{session_id}")


def decoded(entry: dict[str, object] | None) -> bytes:
    assert entry is not None
    value = entry["Value"]
    if value is None:
        return b""
    assert isinstance(value, str)
    return base64.b64decode(value)


# -- sessions ----------------------------------------------------------------


def test_session_create_renew_destroy(consul: ConsulStandIn, http: httpx.Client) -> None:
    session_id = create(http, **LITEFS_SESSION)
    assert consul.sessions() == [session_id]

    response = renew(http, session_id)
    assert response.status_code == 200
    [entry] = response.json()
    assert entry["ID"] == session_id
    assert entry["Name"] == "litefs"
    assert entry["Node"] == AGENT_NODE
    assert entry["Behavior"] == "delete"
    assert entry["TTL"] == "10s"
    # Sent as "1000ms", returned as Go's time.Duration: a number of nanoseconds.
    assert entry["LockDelay"] == 1_000_000_000

    assert boolean(http.put(f"/v1/session/destroy/{session_id}")) is True
    assert consul.sessions() == []
    response = renew(http, session_id)
    assert response.status_code == 404
    assert response.text == f"Session id '{session_id}' not found"
    # Destroying an unknown session is not an error in Consul.
    assert boolean(http.put(f"/v1/session/destroy/{session_id}")) is True


def test_session_defaults_and_catalog_registered_node(http: httpx.Client) -> None:
    # An empty body: Consul's defaults (agent node, release, lock-delay 15s, no TTL).
    response = http.put("/v1/session/create")
    assert response.status_code == 200
    [entry] = renew(http, response.json()["ID"]).json()
    defaults = (entry["Node"], entry["Behavior"], entry["LockDelay"], entry["TTL"])
    assert defaults == (AGENT_NODE, "release", 15 * 10**9, "")

    # LiteFS with a key prefix registers "<prefix>/litefs" and names it in its sessions.
    register = {"ID": "", "Node": "myapp/litefs", "Address": "localhost", "TaggedAddresses": None, "Service": None}
    assert boolean(http.put("/v1/catalog/register", content=json.dumps(register))) is True
    session_id = create(http, Node="myapp/litefs", Name="litefs", TTL="10s")
    [entry] = renew(http, session_id).json()
    assert entry["Node"] == "myapp/litefs"
    # Field names match case-insensitively, as with Go's JSON decoder.
    session_id = create(http, node="MyApp/LiteFS", behavior="delete")
    assert renew(http, session_id).json()[0]["Behavior"] == "delete"


@dataclass(frozen=True)
class LockDelayCase:
    id: str
    sent: object
    nanoseconds: int


LOCK_DELAY_CASES = [
    LockDelayCase("go-client-string-ms", "1000ms", 1_000_000_000),
    LockDelayCase("go-string-mixed-units", "1m1.5s", 61_500_000_000),
    LockDelayCase("number-is-nanoseconds", 1_500_000_000, 1_500_000_000),
    LockDelayCase("small-number-means-seconds", 15, 15_000_000_000),
    LockDelayCase("small-duration-means-seconds", "999ns", 999_000_000_000),
    LockDelayCase("zero-string-disables", "0s", 0),
    LockDelayCase("omitted-is-15s", None, 15_000_000_000),
]


@pytest.mark.parametrize("case", LOCK_DELAY_CASES, ids=[case.id for case in LOCK_DELAY_CASES])
def test_lock_delay_is_parsed_like_consul(http: httpx.Client, case: LockDelayCase) -> None:
    fields: dict[str, object] = {"Name": "x"}
    if case.sent is not None:
        fields["LockDelay"] = case.sent
    session_id = create(http, **fields)
    assert renew(http, session_id).json()[0]["LockDelay"] == case.nanoseconds


# -- locks -------------------------------------------------------------------


def test_acquire_refused_for_another_session_until_released(consul: ConsulStandIn, http: httpx.Client) -> None:
    a = create(http, **LITEFS_SESSION)
    b = create(http, **LITEFS_SESSION)

    assert acquire(http, a, b'{"hostname":"a"}') is True
    entry = get(http)
    assert entry is not None
    assert entry["Session"] == a
    assert entry["LockIndex"] == 1
    assert decoded(entry) == b'{"hostname":"a"}'
    assert consul.holder(KEY) == a

    assert acquire(http, b, b'{"hostname":"b"}') is False
    assert release(http, b) is False  # only the holder releases
    assert consul.holder(KEY) == a
    assert consul.value(KEY) == b'{"hostname":"a"}'

    # The holder may acquire again to update the value; LockIndex stays.
    # Query parameters the Go client may add (dc, ns) are ignored.
    response = http.put(f"/v1/kv/{KEY}", params={"acquire": a, "dc": "dc1", "ns": "default"}, content=b"again")
    assert boolean(response) is True
    entry = get(http)
    assert entry is not None
    assert (entry["LockIndex"], decoded(entry)) == (1, b"again")

    # Release: as in Consul, the (empty) body replaces the value; no lock-delay follows.
    assert release(http, a) is True
    entry = get(http)
    assert entry is not None
    assert "Session" not in entry
    assert entry["Value"] is None
    assert consul.holder(KEY) is None
    assert consul.value(KEY) == b""

    assert acquire(http, b, b'{"hostname":"b"}') is True
    entry = get(http)
    assert entry is not None
    assert (entry["Session"], entry["LockIndex"]) == (b, 2)


def test_ttl_expiry_deletes_the_key_and_lock_delay_holds_off_the_next_acquire(
    consul: ConsulStandIn, http: httpx.Client
) -> None:
    ttl, lock_delay = 0.3, 0.5
    a = create(http, Name="litefs", Behavior="delete", TTL="300ms", LockDelay="500ms")
    b = create(http, Name="litefs", Behavior="delete", TTL="10s", LockDelay="500ms")
    assert acquire(http, a, b"a") is True

    before_last_renew = time.monotonic()
    assert renew(http, a).status_code == 200
    # No more renewals: the key disappears with the session.
    wait_for(lambda: get(http) is None, timeout=5, message="a's key outlived its session's TTL")
    assert time.monotonic() - before_last_renew >= ttl
    assert renew(http, a).status_code == 404
    assert consul.sessions() == [b]

    # Lock-delay: nobody may take the key straight after its holder's session was invalidated.
    assert acquire(http, b, b"b") is False
    wait_for(lambda: acquire(http, b, b"b"), timeout=5, message="lock-delay never ended")
    assert time.monotonic() - before_last_renew >= ttl + lock_delay
    assert consul.holder(KEY) == b


def test_ttl_and_lock_delay_boundaries_are_exact(
    fake_consul: ConsulStandIn, fake_http: httpx.Client, clock: FakeClock
) -> None:
    http = fake_http
    a = create(http, Behavior="delete", TTL="10s", LockDelay="2s")
    b = create(http, Behavior="delete", TTL="1h")
    assert acquire(http, a, b"a") is True

    clock.now += 9.999
    assert renew(http, a).status_code == 200  # renewing restarts the TTL
    clock.now += 9.999
    assert fake_consul.holder(KEY) == a
    clock.now += 0.001
    # Nothing ran in between: the expiry is noticed by the very next request.
    assert get(http) is None
    assert fake_consul.sessions() == [b]

    clock.now += 1.999
    assert acquire(http, b) is False
    clock.now += 0.001
    assert acquire(http, b) is True


def test_release_behavior_keeps_the_key_unlocked_and_sets_lock_delay(
    fake_consul: ConsulStandIn, fake_http: httpx.Client, clock: FakeClock
) -> None:
    http = fake_http
    a = create(http, Behavior="release", LockDelay="1s")
    b = create(http, Behavior="release")
    assert acquire(http, a, b"kept") is True

    fake_consul.expire_session(a)
    assert fake_consul.sessions() == [b]
    assert fake_consul.holder(KEY) is None
    assert fake_consul.value(KEY) == b"kept"
    assert acquire(http, b, b"b") is False
    clock.now += 1
    assert acquire(http, b, b"b") is True
    entry = get(http)
    assert entry is not None
    assert (entry["Session"], entry["LockIndex"], decoded(entry)) == (b, 2, b"b")


def test_destroy_applies_lock_delay_but_release_does_not(fake_consul: ConsulStandIn, fake_http: httpx.Client) -> None:
    http = fake_http
    a = create(http, Behavior="delete", LockDelay="5s")
    b = create(http, Behavior="delete", LockDelay="5s")
    assert acquire(http, a, b"a") is True
    assert boolean(http.put(f"/v1/session/destroy/{a}")) is True
    assert get(http) is None
    assert acquire(http, b) is False

    other = "litefs/other"
    assert acquire(http, b, key=other) is True
    assert release(http, b, key=other) is True
    c = create(http)
    assert acquire(http, c, key=other) is True


def test_expire_session_unknown_raises(consul: ConsulStandIn) -> None:
    with pytest.raises(KeyError):
        consul.expire_session("no-such-session")


# -- plain key/value ---------------------------------------------------------


def test_plain_put_get_delete(consul: ConsulStandIn, http: httpx.Client) -> None:
    key = "litefs/primary/clusterid"
    assert get(http, key) is None
    assert consul.value(key) is None

    value = bytes(range(256))
    assert boolean(http.put(f"/v1/kv/{key}", params={"flags": "42"}, content=value)) is True
    entry = get(http, key)
    assert entry is not None
    assert decoded(entry) == value
    assert entry["Value"] == base64.b64encode(value).decode()
    assert (entry["Key"], entry["Flags"], entry["LockIndex"]) == (key, 42, 0)
    assert "Session" not in entry
    first_index = entry["ModifyIndex"]
    assert isinstance(first_index, int)
    assert entry["CreateIndex"] == first_index
    response = http.get(f"/v1/kv/{key}")
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["X-Consul-Index"]) >= first_index
    assert response.headers["X-Consul-KnownLeader"] == "true"

    # The same write again changes nothing, so ModifyIndex stays; a new value moves it.
    assert boolean(http.put(f"/v1/kv/{key}", params={"flags": "42"}, content=value)) is True
    entry = get(http, key)
    assert entry is not None
    assert entry["ModifyIndex"] == first_index
    assert boolean(http.put(f"/v1/kv/{key}", content=b"LFSC123")) is True
    entry = get(http, key)
    assert entry is not None
    modify_index = entry["ModifyIndex"]
    assert isinstance(modify_index, int)
    assert modify_index > first_index
    assert (entry["CreateIndex"], entry["Flags"], decoded(entry)) == (first_index, 0, b"LFSC123")

    assert boolean(http.put(f"/v1/kv/{key}", params={"cas": str(modify_index + 1)}, content=b"x")) is False
    assert boolean(http.put(f"/v1/kv/{key}", params={"cas": "0"}, content=b"x")) is False  # only if absent
    assert boolean(http.put(f"/v1/kv/{key}", params={"cas": str(modify_index)}, content=b"x")) is True
    assert consul.value(key) == b"x"

    assert boolean(http.delete(f"/v1/kv/{key}")) is True
    assert get(http, key) is None
    assert boolean(http.delete(f"/v1/kv/{key}")) is True


def test_plain_put_keeps_the_holder(consul: ConsulStandIn, http: httpx.Client) -> None:
    a = create(http)
    assert acquire(http, a, b"a") is True
    assert boolean(http.put(f"/v1/kv/{KEY}", content=b"overwritten")) is True
    assert consul.holder(KEY) == a
    assert consul.value(KEY) == b"overwritten"


def test_chunked_request_body(consul: ConsulStandIn, http: httpx.Client) -> None:
    response = http.put("/v1/kv/chunked", content=iter([b"ab", b"cd", b"ef"]))
    assert boolean(response) is True
    assert consul.value("chunked") == b"abcdef"


# -- bad input ---------------------------------------------------------------


@dataclass(frozen=True)
class BadRequest:
    id: str
    method: str
    path: str
    body: bytes
    status: int
    says: str
    params: tuple[tuple[str, str], ...] = ()


BAD_REQUESTS = [
    BadRequest("session-garbage-json", "PUT", "/v1/session/create", b"{not json", 400, "Request decode failed"),
    BadRequest("session-json-not-object", "PUT", "/v1/session/create", b"[1, 2]", 400, "expected a JSON object"),
    BadRequest("session-deep-json", "PUT", "/v1/session/create", b"[" * 200_000, 400, "Request decode failed"),
    BadRequest("session-bad-ttl", "PUT", "/v1/session/create", b'{"TTL": "ten seconds"}', 400, "Session TTL"),
    BadRequest("session-negative-ttl", "PUT", "/v1/session/create", b'{"TTL": "-1s"}', 400, "Invalid Session TTL"),
    BadRequest("session-ttl-over-24h", "PUT", "/v1/session/create", b'{"TTL": "25h"}', 400, "Invalid Session TTL"),
    BadRequest("session-ttl-not-string", "PUT", "/v1/session/create", b'{"TTL": 10}', 400, "ttl must be a string"),
    BadRequest("session-bad-behavior", "PUT", "/v1/session/create", b'{"Behavior": "x"}', 400, "behavior"),
    BadRequest("session-lock-delay-no-unit", "PUT", "/v1/session/create", b'{"LockDelay": "5"}', 400, "duration"),
    BadRequest("session-lock-delay-bool", "PUT", "/v1/session/create", b'{"LockDelay": true}', 400, "LockDelay"),
    BadRequest("session-lock-delay-inf", "PUT", "/v1/session/create", b'{"LockDelay": Infinity}', 400, "LockDelay"),
    BadRequest("session-health-checks", "PUT", "/v1/session/create", b'{"Checks": ["web"]}', 400, "health checks"),
    BadRequest("session-unknown-node", "PUT", "/v1/session/create", b'{"Node": "ghost"}', 500, "Missing node"),
    BadRequest("register-garbage-json", "PUT", "/v1/catalog/register", b"\xff\xfe", 400, "Request decode failed"),
    BadRequest("register-no-address", "PUT", "/v1/catalog/register", b'{"Node": "n"}', 400, "Must provide address"),
    BadRequest("renew-unknown-session", "PUT", "/v1/session/renew/nope", b"", 404, "Session id 'nope' not found"),
    BadRequest("renew-no-session", "PUT", "/v1/session/renew/", b"", 400, "Missing session"),
    BadRequest(
        "acquire-unknown-session", "PUT", "/v1/kv/k", b"", 500, 'invalid session "nope"', (("acquire", "nope"),)
    ),
    BadRequest("acquire-no-session", "PUT", "/v1/kv/k", b"", 500, "missing session", (("acquire", ""),)),
    BadRequest(
        "acquire-and-release", "PUT", "/v1/kv/k", b"", 400, "Conflicting flags", (("acquire", "a"), ("release", "a"))
    ),
    BadRequest("bad-flags", "PUT", "/v1/kv/k", b"", 400, "flags", (("flags", "-1"),)),
    BadRequest("bad-cas", "PUT", "/v1/kv/k", b"", 400, "cas", (("cas", "x"),)),
    BadRequest("put-no-key", "PUT", "/v1/kv/", b"", 400, "Missing key name"),
    BadRequest("get-recurse", "GET", "/v1/kv/k", b"", 400, "recurse", (("recurse", ""),)),
    BadRequest("value-too-large", "PUT", "/v1/kv/k", b"x" * (MAX_BODY + 1), 413, "too large"),
    BadRequest("unknown-endpoint", "GET", "/v1/agent/self", b"", 404, "no such endpoint"),
    BadRequest("wrong-method-session", "POST", "/v1/session/create", b"{}", 405, "not allowed"),
    BadRequest("wrong-method-kv", "PATCH", "/v1/kv/k", b"", 405, "not allowed"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case.id for case in BAD_REQUESTS])
def test_bad_input_gets_a_short_text_answer(consul: ConsulStandIn, http: httpx.Client, case: BadRequest) -> None:
    response = http.request(case.method, case.path, params=list(case.params), content=case.body)
    assert response.status_code == case.status, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert case.says.lower() in response.text.lower()
    assert "Traceback" not in response.text
    assert len(response.text) < 300
    # The stand-in is still fine afterwards.
    assert get(http, "after") is None
    assert consul.sessions() == []


def test_unknown_endpoint_is_logged(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="litefs_route_devcluster"):
        assert http.get("/v1/status/leader").status_code == 404
    assert any("/v1/status/leader" in record.getMessage() for record in caplog.records)


# -- life cycle --------------------------------------------------------------


def test_close_is_idempotent_and_start_again_keeps_state_and_port() -> None:
    standin = ConsulStandIn().start()
    assert standin.start() is standin
    host, port = standin.address
    assert standin.url == f"http://127.0.0.1:{port}"
    with local_client(standin.url) as http:
        session_id = create(http, TTL="1h")
        assert acquire(http, session_id, b"v") is True
    standin.close()
    standin.close()
    with pytest.raises(RuntimeError):
        _ = standin.url
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, port), timeout=1):
        pass

    with standin, local_client(standin.url) as http:
        assert standin.address == (host, port)
        entry = get(http)
        assert entry is not None
        assert entry["Session"] == session_id
    assert standin.holder(KEY) == session_id
