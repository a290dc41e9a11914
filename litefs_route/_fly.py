"""Fly.io's private network: an instance's URL, and every instance of the app.

What litefs-js offers as ``getInternalInstanceDomain`` and ``getAllInstances``,
standard library only::

    from litefs_route import instance_url, list_instances

    instance_url("5ef6ddf5", 8081)   # "http://5ef6ddf5.vm.myapp.internal:8081"
    list_instances()                 # {"5ef6ddf5": "maa", "5ef6ddf6": "sjc"}

Off Fly (no ``FLY_APP_NAME``) both raise :class:`NotOnFly`. ``list_instances``
asks Fly's internal DNS for the TXT record ``vms.<app>.internal`` (one UDP
query to the first ``nameserver`` of ``/etc/resolv.conf``, which on Fly is
``fdaa::3``), within *timeout* seconds.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import struct

from ._mount import is_valid_instance_id

__all__ = ["NotOnFly", "instance_url", "list_instances"]

_TXT = 16
_IN = 1
_OPT = 41
# The UDP payload we accept (EDNS0): a large app's TXT record exceeds DNS's classic 512 bytes.
_UDP_SIZE = 4096


class NotOnFly(RuntimeError):
    """There is no Fly app here (``FLY_APP_NAME`` is not set)."""


def _app_name() -> str:
    app = os.environ.get("FLY_APP_NAME", "")
    if not app:
        raise NotOnFly("FLY_APP_NAME is not set: not running on Fly, so there is no private network to name")
    if not is_valid_instance_id(app):
        raise ValueError(f"FLY_APP_NAME is not a valid name: {app!r}")
    return app


def instance_url(instance_id: str, port: int | None = None) -> str:
    """``http://<instance_id>.vm.<app>.internal:<port>``: one instance on Fly's private network.

    *port* defaults to ``$INTERNAL_PORT``, then ``$PORT``, as litefs-js.
    Raises :class:`NotOnFly` off Fly, and ValueError for an instance id or a
    port that is not one.
    """
    if not is_valid_instance_id(instance_id):
        raise ValueError(f"instance_id must be a host name or Fly Machine ID, got {instance_id!r}")
    if port is None:
        text = os.environ.get("INTERNAL_PORT") or os.environ.get("PORT") or ""
        if not text.isdigit():
            raise ValueError("pass a port, or set INTERNAL_PORT or PORT")
        port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"not a port: {port!r}")
    return f"http://{instance_id}.vm.{_app_name()}.internal:{port}"


def list_instances(*, timeout: float = 2.0, resolver: tuple[str, int] | None = None) -> dict[str, str]:
    """Every instance of the app, id -> region, from Fly's internal DNS (blocking).

    *resolver* is the DNS server (default: the first ``nameserver`` in
    ``/etc/resolv.conf``). Raises :class:`NotOnFly` off Fly, TimeoutError if
    no answer comes within *timeout*, and OSError for an answer that is an
    error or not DNS.
    """
    name = f"vms.{_app_name()}.internal"
    records = _query_txt(name, resolver or _system_resolver(), timeout)
    instances: dict[str, str] = {}
    # Each record: "id region,id region,..." (long ones split into several strings).
    for entry in b"".join(records).decode("ascii", "replace").split(","):
        fields = entry.split()
        if len(fields) == 2 and is_valid_instance_id(fields[0]) and is_valid_instance_id(fields[1]):
            instances[fields[0]] = fields[1]
    return instances


def _system_resolver() -> tuple[str, int]:
    try:
        with open("/etc/resolv.conf", encoding="ascii", errors="replace") as conf:
            for line in conf:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    return fields[1].split("%")[0], 53
    except OSError as exc:
        raise OSError(f"no DNS resolver: /etc/resolv.conf cannot be read ({exc.strerror})") from exc
    raise OSError("no DNS resolver: /etc/resolv.conf names no nameserver")


def _query_txt(name: str, resolver: tuple[str, int], timeout: float) -> list[bytes]:
    """The TXT strings of *name*, in answer order: one DNS query over UDP."""
    query_id = secrets.randbits(16)
    labels = name.encode("ascii").split(b".")
    question = b"".join(bytes([len(label)]) + label for label in labels) + b"\0" + struct.pack(">HH", _TXT, _IN)
    opt = b"\0" + struct.pack(">HHIH", _OPT, _UDP_SIZE, 0, 0)  # EDNS0: answers up to _UDP_SIZE bytes
    message = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 1) + question + opt
    host, port = resolver
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(message, (host, port))
        while True:  # a stray datagram (another query's) is skipped, within the timeout
            answer, _ = sock.recvfrom(_UDP_SIZE)
            if len(answer) >= 12 and struct.unpack(">H", answer[:2])[0] == query_id:
                return _txt_records(answer, name)


def _txt_records(answer: bytes, name: str) -> list[bytes]:
    try:
        _, flags, questions, answers, _, _ = struct.unpack(">HHHHHH", answer[:12])
        if flags & 0x0200:
            raise OSError(f"the DNS answer for {name} was truncated")
        if flags & 0x000F == 3:  # NXDOMAIN: no instance at all
            return []
        if flags & 0x000F:
            raise OSError(f"the DNS server answered {name} with error {flags & 0x000F}")
        offset = 12
        for _ in range(questions):
            offset = _skip_name(answer, offset) + 4
        records: list[bytes] = []
        for _ in range(answers):
            offset = _skip_name(answer, offset)
            kind, _, _, length = struct.unpack(">HHIH", answer[offset : offset + 10])
            offset += 10
            data = answer[offset : offset + length]
            offset += length
            if kind == _TXT:
                at = 0
                while at < len(data):
                    size = data[at]
                    records.append(data[at + 1 : at + 1 + size])
                    at += 1 + size
        return records
    except (struct.error, IndexError) as exc:
        raise OSError(f"the DNS answer for {name} does not parse") from exc


def _skip_name(message: bytes, offset: int) -> int:
    """The offset after the (possibly compressed) name at *offset*."""
    while True:
        length = message[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:  # a pointer ends the name
            return offset + 2
        offset += 1 + length
