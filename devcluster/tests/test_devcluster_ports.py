"""Ports the dev cluster hands its servers: never the same twice, never one the kernel hands anyone else."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from litefs_route_devcluster.ports import LOCK_FILE, ephemeral_range, release_port, reserve_port
from tests.support import ROOT

if TYPE_CHECKING:
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

# In another process: 0 if it could lock byte PORT of the shared lock file (the port's reservation), 1 if not.
_TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]), os.SEEK_SET)
except OSError:
    sys.exit(1)
"""


def test_reserved_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    """A port from bind(0) can be handed out again at once, and any connection may take it as its local port."""
    first, last = ephemeral_range()
    ports = [reserve_port() for _ in range(50)]
    try:
        assert len(set(ports)) == len(ports)
        assert not [port for port in ports if first <= port <= last]
    finally:
        for port in ports:
            release_port(port)


def test_another_process_cannot_take_a_reserved_port_until_it_is_released() -> None:
    port = reserve_port()
    try:
        held = subprocess.run([sys.executable, "-c", _TRY_LOCK, LOCK_FILE, str(port)], cwd=ROOT, check=False)
        assert held.returncode == 1
    finally:
        release_port(port)
    free = subprocess.run([sys.executable, "-c", _TRY_LOCK, LOCK_FILE, str(port)], cwd=ROOT, check=False)
    assert free.returncode == 0


@pytest.mark.litefs
def test_every_port_of_a_cluster_is_its_own(litefs_real_cluster: LiteFSClusterFactory) -> None:
    """All of a cluster's ports are chosen before its first LiteFS starts: once two nodes got the same API port."""
    cluster = litefs_real_cluster("tests.devcluster_apps.wsgi_app:app", instances=3, lease="consul", litefs_proxy=True)
    assert cluster.consul is not None
    ports = [cluster.consul.address[1], cluster.front.address[1]]
    ports += [i.port for i in cluster.instances.values()]
    ports += [p for n in cluster.nodes.values() for p in (n.http_port, n.proxy_port) if p is not None]
    assert len(ports) == 11
    assert len(set(ports)) == len(ports), ports
