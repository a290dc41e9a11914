"""Fly's private network: instance URLs, and the instances from its internal DNS.

Fly's DNS (``fdaa::3``) cannot run here; a small DNS server on 127.0.0.1 that
answers the TXT query as Fly's does stands in for it (real sockets, real
DNS packets).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from litefs_route import NotOnFly, instance_url, list_instances


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({"FLY_APP_NAME": "myapp"}, ("5ef6ddf5", 8081), "http://5ef6ddf5.vm.myapp.internal:8081"),
        ({"FLY_APP_NAME": "myapp", "INTERNAL_PORT": "8081", "PORT": "8080"}, ("5ef6ddf5",), ":8081"),
        ({"FLY_APP_NAME": "myapp", "PORT": "8080"}, ("5ef6ddf5",), "http://5ef6ddf5.vm.myapp.internal:8080"),
        ({"FLY_APP_NAME": "myapp"}, ("5ef6ddf5",), ValueError),
        ({"FLY_APP_NAME": "myapp"}, ("a b", 80), ValueError),
        ({"FLY_APP_NAME": "myapp"}, ("5ef6ddf5", 70000), ValueError),
        ({}, ("5ef6ddf5", 8081), NotOnFly),
    ],
    ids=["explicit-port", "internal-port-first", "port", "no-port", "bad-id", "bad-port", "off-fly"],
)
def test_instance_url(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: tuple[object, ...], expected: object
) -> None:
    for name in ("FLY_APP_NAME", "INTERNAL_PORT", "PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if isinstance(expected, type):
        with pytest.raises(expected):
            instance_url(*args)  # type: ignore[arg-type]
    else:
        assert instance_url(*args).endswith(str(expected))  # type: ignore[arg-type]


@contextmanager
def fly_dns(txt: list[bytes] | None) -> Iterator[tuple[str, int]]:
    """A DNS server answering ``vms.myapp.internal`` TXT with the strings *txt* (None: NXDOMAIN), as Fly's does."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)

    def serve() -> None:
        try:
            query, client = sock.recvfrom(4096)
        except OSError:
            return
        query_id = query[:2]
        end = query.index(b"\0", 12) + 5  # the question: the name, then type and class
        question = query[12:end]
        if txt is None:
            header = query_id + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0)
            sock.sendto(header + question, client)
            return
        rdata = b"".join(bytes([len(s)]) + s for s in txt)
        record = b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 5, len(rdata)) + rdata  # the name: a pointer
        header = query_id + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
        sock.sendto(b"\xde\xad" + header[2:] + question, client)  # another query's answer first: skipped
        sock.sendto(header + question + record, client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        thread.join(5)
        sock.close()


@pytest.mark.parametrize(
    ("txt", "expected"),
    [
        ([b"5ef6ddf5 maa,5ef6ddf6 sjc"], {"5ef6ddf5": "maa", "5ef6ddf6": "sjc"}),
        ([b"5ef6ddf5 maa,5ef6d", b"df6 sjc,5ef6ddf7 ams"], {"5ef6ddf5": "maa", "5ef6ddf6": "sjc", "5ef6ddf7": "ams"}),
        ([b"5ef6ddf5 maa,garbage,x\r\n y z,5ef6ddf6 sjc"], {"5ef6ddf5": "maa", "5ef6ddf6": "sjc"}),
        (None, {}),
    ],
    ids=["one-string", "split-strings", "garbage-ignored", "no-instances"],
)
def test_list_instances(monkeypatch: pytest.MonkeyPatch, txt: list[bytes] | None, expected: dict[str, str]) -> None:
    monkeypatch.setenv("FLY_APP_NAME", "myapp")
    with fly_dns(txt) as resolver:
        assert list_instances(resolver=resolver) == expected


def test_list_instances_times_out_and_needs_fly(monkeypatch: pytest.MonkeyPatch) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        monkeypatch.setenv("FLY_APP_NAME", "myapp")
        with pytest.raises(TimeoutError):
            list_instances(resolver=silent.getsockname(), timeout=0.2)
        monkeypatch.delenv("FLY_APP_NAME")
        with pytest.raises(NotOnFly):
            list_instances(resolver=silent.getsockname())
    finally:
        silent.close()
