"""``setup`` / ``litefs-route dev --setup CMD``: the app's own schema, made on the primary before the apps start.

The app here (``tests.devcluster_apps.schema_app``) reads its table at
import: had the setup not run first, on the primary, and reached every
replica, its servers would never listen.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

from litefs_route_devcluster import Cluster, port_open
from tests.support import FORCE, ROOT, start_dev

if TYPE_CHECKING:
    from litefs_route_devcluster.pytest_plugin import ClusterFactory, LiteFSClusterFactory

APP = "tests.devcluster_apps.schema_app:app"
# What a user's setup does: the schema, in the node's database, from the node's environment.
SCHEMA = """
import os, sqlite3
assert os.path.dirname(os.environ["DATABASE_PATH"]) == os.environ["LITEFS_DIR"]
assert os.path.basename(os.environ["DATABASE_PATH"]) == os.environ["DATABASE_FILENAME"]
with sqlite3.connect(os.environ["DATABASE_PATH"]) as db:
    db.execute("CREATE TABLE setup_marker (made_on TEXT NOT NULL)")
    db.execute("INSERT INTO setup_marker VALUES (?)", (os.environ["FLY_MACHINE_ID"],))
print("schema made on", os.environ["FLY_MACHINE_ID"])
"""
SETUP = shlex.join([sys.executable, "-c", SCHEMA])


def _every_instance_sees_the_setup(front_url: str, ids: list[str], primary: str) -> None:
    with httpx.Client(base_url=front_url, timeout=30) as client:
        for instance in ids:
            assert client.get("/", headers={FORCE: instance}).text == f"{instance} sees setup from {primary}"


def test_the_imitation_runs_setup_on_the_primary_first(litefs_cluster: ClusterFactory) -> None:
    cluster = litefs_cluster(APP, instances=3, primary="node2", app_dir=ROOT, setup=SETUP)
    _every_instance_sees_the_setup(cluster.front_url, cluster.ids, "node2")
    with open(f"{cluster.base_dir}/logs/setup.log") as log:
        assert log.read() == "schema made on node2\n"


@pytest.mark.litefs
def test_real_litefs_runs_setup_on_the_primary_first(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(APP, instances=3, lease="consul", app_dir=ROOT, setup=SETUP)
    _every_instance_sees_the_setup(cluster.front_url, cluster.ids, "node1")


def test_a_failing_setup_stops_the_start_with_its_output() -> None:
    cluster = Cluster(APP, instances=2, app_dir=ROOT, setup="echo 'no migrations here' >&2; exit 3")
    with pytest.raises(RuntimeError, match=r"(?s)the setup command exited with 3.*no migrations here"):
        cluster.start()
    assert not any(port_open(i.host, i.port) for i in cluster.instances.values())


def test_dev_setup_option() -> None:
    process, lines = start_dev("--imitation", "--instances", "2", "--setup", SETUP, APP, stdin=subprocess.PIPE)
    with process:
        try:
            assert process.stdin is not None
            assert lines
            assert lines[-1].startswith("ready: front "), lines
            front_url = lines[-1].split()[-1]
            _every_instance_sees_the_setup(front_url, ["node1", "node2"], "node1")
            banner = "".join(lines)
            assert "health check (GET /litefs/health, every 1 s)" in banner
            process.stdin.write("quit\n")
            process.stdin.flush()
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
