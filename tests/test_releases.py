"""Release-aware migrations on real LiteFS: the registry, after-release steps, the schema gate, promote.

Three LiteFS nodes with a Consul lease (node1 primary at start). Every
command is the real ``litefs-route`` command line, one process per call, as a
deploy runs it: ``--dir`` the node's mount, ``--instance-id`` the node. On a
replica, registering goes through LiteFS's HALT lock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from litefs_route._cli import EXIT_OK, EXIT_TIMEOUT
from litefs_route._ops.registry import Heartbeat, InstanceRecord, instances
from litefs_route._ops.steps import step_record
from tests.support import wait_until

if TYPE_CHECKING:
    from litefs_route_devcluster.litefs import LiteFSCluster
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

pytestmark = pytest.mark.litefs


def _args(cluster: LiteFSCluster, node: str, *args: str) -> list[str]:
    words = 2 if args[0] == "release" else 1  # the command ("release wait", "exec"), then the node's options
    return [
        sys.executable,
        "-m",
        "litefs_route",
        *args[:words],
        "--dir",
        cluster.mount_dir(node),
        "--instance-id",
        node,
        "--database",
        "app.db",
        "--api-url",
        cluster.nodes[node].api_url,
        *args[words:],
    ]


def _run(cluster: LiteFSCluster, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_args(cluster, node, *args), capture_output=True, text=True, timeout=120)


def _start(cluster: LiteFSCluster, node: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(_args(cluster, node, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _register(cluster: LiteFSCluster, node: str, release: str, *extra: str) -> None:
    result = _run(cluster, node, "release", "register", "--release", release, *extra)
    assert result.returncode == EXIT_OK, result.stderr


def _register_all(cluster: LiteFSCluster, release: str) -> None:
    """node1 (the primary) creates the registry; the replicas register once it reached them (for their HALT lock)."""
    _register_all_of(cluster, ["node1", "node2", "node3"], release)


def _register_all_of(cluster: LiteFSCluster, nodes: list[str], release: str) -> None:
    primary, *replicas = nodes
    _register(cluster, primary, release)
    cluster.wait_replicated()
    for node in replicas:
        _register(cluster, node, release)


def _step(marker: Path, label: str) -> list[str]:
    """A step that appends *label* to *marker*: how many times it ran, and where."""
    code = f"open({str(marker)!r}, 'a').write({label!r} + chr(10))"
    return ["--", sys.executable, "-c", code]


def _ran(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def _step_done(cluster: LiteFSCluster, release: str) -> bool:
    record = step_record(cluster.db_path("node1"), release, "after-release")
    return record is not None and record.done_at is not None


def _status(cluster: LiteFSCluster, node: str) -> dict[str, str]:
    result = _run(cluster, node, "release", "status", "--json")
    assert result.returncode == EXIT_OK, result.stderr
    return {r["instance"]: r["release"] for r in json.loads(result.stdout)}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_heartbeat_told_to_stop_ends_after_its_renewal_and_leaves_the_primary_readable(
    litefs_real_cluster: LiteFSClusterFactory, signum: signal.Signals
) -> None:
    """On a replica (each renewal takes the HALT lock): a signal ends it between renewals, exit 0.

    Killed in the middle of one instead, LiteFS v0.5.14 could be left stuck with
    the primary's database locked (what a read of it checks here).
    """
    cluster = litefs_real_cluster(instances=2, lease="consul")
    _register_all_of(cluster, ["node1", "node2"], "v1")
    beat = _start(cluster, "node2", "release", "heartbeat", "--release", "v2", "--every", "0.05")
    assert beat.stderr is not None
    assert "registered on release v2" in beat.stderr.readline()
    beat.send_signal(signum)
    _, stderr = beat.communicate(timeout=30)
    assert beat.returncode == EXIT_OK, stderr
    assert {r.instance: r.release for r in instances(cluster.db_path("node1"), gone_after=None)} == {
        "node1": "v1",
        "node2": "v2",
    }


def test_a_rolling_deploy_runs_the_after_release_step_once_after_the_last_instance(
    litefs_real_cluster: LiteFSClusterFactory, tmp_path: Path
) -> None:
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _register_all(cluster, "v1")
    cluster.wait_replicated()
    assert _status(cluster, "node3") == {"node1": "v1", "node2": "v1", "node3": "v1"}

    marker = tmp_path / "ran"
    step = _start(cluster, "node1", "exec", "--if-primary", "--after-release", "v2", *_step(marker, "node1"))
    for node in ("node3", "node2"):  # the deploy restarts the replicas first
        _register(cluster, node, "v2")
        assert step.poll() is None, "ran before every instance ran v2"
    assert _ran(marker) == []
    _register(cluster, "node1", "v2")
    _, stderr = step.communicate(timeout=60)
    assert step.returncode == EXIT_OK, stderr
    assert _ran(marker) == ["node1"]
    assert "until every instance runs v2; not yet: node1 (v1)" in stderr  # who it waited for (by id)
    assert "recorded as done" in stderr

    again = _run(cluster, "node1", "exec", "--if-primary", "--after-release", "v2", *_step(marker, "again"))
    on_replica = _run(cluster, "node2", "exec", "--if-primary", "--after-release", "v2", *_step(marker, "node2"))
    assert (again.returncode, on_replica.returncode) == (EXIT_OK, EXIT_OK)
    assert "already ran" in again.stderr
    assert "skipped" in on_replica.stderr
    assert _ran(marker) == ["node1"]


def test_an_instance_that_is_gone_no_longer_holds_the_step_back(
    litefs_real_cluster: LiteFSClusterFactory, tmp_path: Path
) -> None:
    """An instance killed mid-deploy stops renewing: after --gone-after it is not waited for.

    Every instance renews (start.sh's heartbeat) until node3 is killed, once
    the step waits for it: how long anything took never decides who is live.
    """
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _register_all(cluster, "v1")
    beats = {
        node: _start(cluster, node, "release", "heartbeat", "--release", release, "--every", "0.5")
        for node, release in (("node1", "v2"), ("node2", "v2"), ("node3", "v1"))
    }
    marker = tmp_path / "ran"
    try:
        wait_until(
            lambda: _status(cluster, "node1") == {"node1": "v2", "node2": "v2", "node3": "v1"},
            timeout=60,
            what="node1 and node2 to run v2, node3 v1",
        )
        with _start(
            cluster, "node1", "exec", "--if-primary", "--after-release", "v2", "--gone-after", "3", *_step(marker, "n1")
        ) as step:
            assert step.stderr is not None
            waiting = next((line for line in step.stderr if "not yet" in line), "")
            assert "not yet: node3 (v1)" in waiting  # it waits for node3
            beats["node3"].kill()  # node3's Machine dies mid-deploy: it renews no more
            beats["node3"].wait(30)
            stderr = step.stderr.read()
            step.wait(60)
    finally:
        for beat in beats.values():
            beat.terminate()
            beat.communicate(timeout=30)
    assert step.returncode == EXIT_OK, stderr
    record = step_record(cluster.db_path("node1"), "v2", "after-release")
    [node3] = [r for r in instances(cluster.db_path("node1"), gone_after=None) if r.instance == "node3"]
    assert record is not None
    assert record.started_at - node3.seen_at >= 3  # it ran once node3 counted as gone, not before
    assert _ran(marker) == ["n1"]
    assert _run(cluster, "node1", "release", "wait", "--all-on", "v3", "--timeout", "0.5").returncode == EXIT_TIMEOUT


def test_the_schema_gate_holds_a_replica_until_the_migration_arrives(
    litefs_real_cluster: LiteFSClusterFactory,
) -> None:
    cluster = litefs_real_cluster(instances=3, lease="consul")
    with sqlite3.connect(cluster.db_path("node1")) as db:
        db.execute("CREATE TABLE t (v)")
    db.close()
    cluster.wait_replicated()
    gate = _start(cluster, "node3", "wait", "--schema", "5", "--timeout", "60")
    assert gate.stderr is not None
    assert "waiting up to 60 s for schema 5 (now: 0)" in gate.stderr.readline()  # it is waiting
    assert gate.poll() is None
    db = sqlite3.connect(cluster.db_path("node1"))
    db.execute("PRAGMA user_version = 5")
    db.close()
    migrated = time.monotonic()
    _, stderr = gate.communicate(timeout=30)
    let_go = time.monotonic() - migrated
    print(f"the schema gate let the replica go {let_go * 1000:.0f} ms after the migration committed")
    assert gate.returncode == EXIT_OK, stderr
    assert "the schema is at 5" in stderr


def test_promote_moves_the_lease_and_the_step_runs_there(
    litefs_real_cluster: LiteFSClusterFactory, tmp_path: Path
) -> None:
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _register_all(cluster, "v1")
    promoted = _run(cluster, "node2", "promote", "--timeout", "30")
    assert promoted.returncode == EXIT_OK, promoted.stderr
    assert cluster.read("node2", ".primary") is None  # node2 holds the lease
    wait_until(lambda: cluster.read("node1", ".primary") == b"node2\n", what="node1 to follow node2")
    for node in ("node2", "node1", "node3"):
        _register(cluster, node, "v2")
    marker = tmp_path / "ran"
    on_old_primary = _run(cluster, "node1", "exec", "--if-primary", "--after-release", "v2", *_step(marker, "node1"))
    on_new_primary = _run(cluster, "node2", "exec", "--if-primary", "--after-release", "v2", *_step(marker, "node2"))
    assert (on_old_primary.returncode, on_new_primary.returncode) == (EXIT_OK, EXIT_OK), on_new_primary.stderr
    assert _ran(marker) == ["node2"]


def test_two_runs_racing_for_one_step_run_it_once(litefs_real_cluster: LiteFSClusterFactory, tmp_path: Path) -> None:
    """Every candidate's exec entry at once (and the primary's twice): the step runs once, the rest skip."""
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _register_all(cluster, "v1")
    marker = tmp_path / "ran"
    slow = ["--", sys.executable, "-c", f"import time; time.sleep(1); open({str(marker)!r}, 'a').write('x' + chr(10))"]
    racing = [
        _start(cluster, node, "exec", "--if-primary", "--after-release", "v1", *slow)
        for node in ("node1", "node1", "node2", "node3")
    ]
    results = [(p.communicate(timeout=60)[1], p.returncode) for p in racing]
    assert [code for _, code in results] == [EXIT_OK] * 4, results
    assert _ran(marker) == ["x"]


def _recipe(name: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "migrations.md").read_text()
    match = re.search(rf"<!-- litefs-route:test {re.escape(name)} -->\n```sh\n(.*?)```", text, re.DOTALL)
    assert match is not None, f"recipe {name} not found in docs/migrations.md"
    return match[1]


def test_the_worked_deploy_in_the_docs(litefs_real_cluster: LiteFSClusterFactory, tmp_path: Path) -> None:
    """docs/migrations.md's start.sh on three Machines: the primary first, one rolled back, then all on v2."""
    cluster = litefs_real_cluster(instances=3, lease="consul")
    db = sqlite3.connect(cluster.db_path("node1"))
    db.execute("CREATE TABLE t (v)")
    db.execute("PRAGMA user_version = 3")  # the before-release step (litefs.yml's exec) ran on the primary
    db.close()
    cluster.wait_replicated()
    (tmp_path / "start.sh").write_text(_recipe("start.sh"))
    marker = tmp_path / "contracted"
    (tmp_path / "contract.py").write_text(
        f"import os\nopen({str(marker)!r}, 'a').write(os.environ['FLY_MACHINE_ID'] + chr(10))\n"
    )
    app = [sys.executable, "-c", "import time; print('app up', flush=True); time.sleep(600)"]
    bin_dir = os.path.dirname(sys.executable)  # litefs-route and python, as the image has them
    machines: dict[str, subprocess.Popen[bytes]] = {}

    def boot(node: str, release: str) -> None:
        env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "LITEFS_DIR": cluster.mount_dir(node),
            "DATABASE_FILENAME": "app.db",
            "LITEFS_API_URL": cluster.nodes[node].api_url,
            "FLY_MACHINE_ID": node,
            "FLY_IMAGE_REF": release,
        }
        with open(tmp_path / f"{node}-{release}.log", "wb") as log:
            machines[node] = subprocess.Popen(
                ["sh", "start.sh", *app],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: _status(cluster, "node1").get(node) == release, what=f"{node} to register {release}")

    def stop(node: str) -> None:
        os.killpg(machines[node].pid, signal.SIGKILL)  # the Machine, its app and its background jobs
        machines[node].wait(10)

    _register_all(cluster, "v1")  # the previous release runs everywhere, registered
    try:
        boot("node1", "v2")  # the primary first: its after-release step waits for the others
        boot("node2", "v2")
        boot("node3", "v1")  # still (or again) on the old release
        assert _run(cluster, "node1", "release", "wait", "--all-on", "v2", "--timeout", "1").returncode == EXIT_TIMEOUT
        assert _ran(marker) == []
        stop("node3")
        boot("node3", "v2")
        # Done as the registry records it: after the step's process exited, so its one line is all written.
        wait_until(lambda: _step_done(cluster, "v2"), timeout=30, what="the after-release step")
        assert all(machine.poll() is None for machine in machines.values())  # every app is up
    finally:
        for node in list(machines):
            stop(node)
    assert _ran(marker) == ["node1"]
    assert "waiting to run python contract.py until every instance runs v2" in (tmp_path / "node1-v2.log").read_text()


def test_stopping_a_heartbeat_lets_the_renewal_in_flight_finish(tmp_path: Path) -> None:
    """A renewal cut off by the process's exit can wedge a LiteFS replica: stop() (and the exit) wait for it."""
    started, gate = threading.Event(), threading.Event()

    class GatedHeartbeat(Heartbeat):
        def renew(self, *, starting: bool = False) -> InstanceRecord:
            record = super().renew(starting=starting)
            if not starting:  # a renewal of the thread's: it stays in flight until the gate opens
                started.set()
                gate.wait()
            return record

    beat = GatedHeartbeat(tmp_path / "app.db", release="v1", instance_id="me", every=0.01)
    beat.start()
    assert started.wait(30)
    assert beat.stop(timeout=0.05) is False  # still in flight: the gate is closed
    gate.set()
    assert beat.stop() is True
    assert [(r.instance, r.release) for r in instances(str(tmp_path / "app.db"))] == [("me", "v1")]
