"""The primary moving on real LiteFS (Consul lease), and the CLI on real mounts (marker ``litefs``).

The Consul lease is served by :class:`~litefs_route_devcluster.consul.ConsulStandIn`
with a 3 s TTL, so a killed primary's lease expires within seconds.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from litefs_route._cli import EXIT_NO_PRIMARY, EXIT_OK, EXIT_TIMEOUT
from litefs_route._mount import Role, parse_lag, read_node_state
from litefs_route_devcluster.files import NO_PRIMARY_LAG
from litefs_route_devcluster.reaper import is_mounted
from tests.support import FORCE, start_dev, wait_until

if TYPE_CHECKING:
    from litefs_route_devcluster.litefs import LiteFSCluster
    from litefs_route_devcluster.pytest_plugin import LiteFSClusterFactory

pytestmark = pytest.mark.litefs


def _roles(cluster: LiteFSCluster, nodes: list[str]) -> dict[str, tuple[Role, str | None]]:
    out = {}
    for node in nodes:
        state = read_node_state(cluster.mount_dir(node), node)
        out[node] = (state.role, state.primary_id)
    return out


def _seed(cluster: LiteFSCluster, node: str) -> None:
    with sqlite3.connect(cluster.db_path(node)) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO t DEFAULT VALUES")
    db.close()


def _watch_until(cluster: LiteFSCluster, nodes: list[str], done: Any, timeout: float = 30.0) -> list[Any]:
    """Every distinct (roles) reading of *nodes* until *done(roles)*; each reading is one FUSE read per file."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        roles = _roles(cluster, nodes)
        if not seen or seen[-1] != roles:
            seen.append(roles)
        if done(roles):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"not done within {timeout} s; seen: {seen}")


def test_a_killed_primary_leaves_no_primary_until_its_lease_expires(
    litefs_real_cluster: LiteFSClusterFactory,
) -> None:
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _seed(cluster, "node1")
    txid = cluster.wait_replicated()["node1"]
    survivors = ["node2", "node3"]

    cluster.kill_node("node1")

    def elected(roles: dict[str, tuple[Role, str | None]]) -> bool:
        primaries = [n for n, (role, _) in roles.items() if role is Role.PRIMARY]
        return len(primaries) == 1 and all(
            r == (Role.REPLICA, primaries[0]) for n, r in roles.items() if n not in primaries
        )

    seen = _watch_until(cluster, survivors, elected)
    # In between, both survivors had no primary: no .primary, and a .lag that is not zero.
    assert any(all(role is Role.NO_PRIMARY for role, _ in r.values()) for r in seen), seen
    # Never two primaries at once (the new one may show before the other survivor names it).
    assert all(sum(role is Role.PRIMARY for role, _ in r.values()) <= 1 for r in seen), seen
    new_primary = cluster.wait_primary()
    assert new_primary in survivors
    assert cluster.read(new_primary, ".primary") is None
    assert cluster.read(new_primary, ".lag") == b"+000000000\n"
    # The committed, replicated data survived the failover.
    assert cluster.position(new_primary) == txid


def test_no_primary_files(litefs_real_cluster: LiteFSClusterFactory) -> None:
    # During the election: .primary absent (ENOENT) and .lag counting the ms since the primary was last heard.
    cluster = litefs_real_cluster(instances=2, lease="consul", consul_ttl=10.0)
    cluster.wait_replicated()
    # Until node2 has its first heartbeat from node1, its .lag says "never heard" and
    # would stay so after the kill (real LiteFS: no timestamp before the "ready" frame).
    wait_until(
        lambda: parse_lag(cluster.read("node2", ".lag") or b"") not in (None, NO_PRIMARY_LAG),
        what="node2's first heartbeat from node1",
    )
    cluster.kill_node("node1")
    _watch_until(cluster, ["node2"], lambda r: r["node2"][0] is Role.NO_PRIMARY)
    first = parse_lag(cluster.read("node2", ".lag") or b"")
    # Absent, but for the instants LiteFS names node1 again as it retries (the flicker, docs/exactly-once.md).
    wait_until(lambda: cluster.read("node2", ".primary") is None, what="node2's .primary to be absent")
    assert first is not None
    assert first > 0
    _watch_until(cluster, ["node2"], lambda r: (parse_lag(cluster.read("node2", ".lag") or b"") or 0) > first)


def test_graceful_handoff_moves_the_primary_at_once(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(instances=3, lease="consul")
    _seed(cluster, "node1")
    cluster.wait_replicated()
    cluster.promote("node3")
    assert _roles(cluster, ["node1", "node2", "node3"]) == {
        "node1": (Role.REPLICA, "node3"),
        "node2": (Role.REPLICA, "node3"),
        "node3": (Role.PRIMARY, "node3"),
    }
    with sqlite3.connect(cluster.db_path("node3")) as db:
        db.execute("INSERT INTO t DEFAULT VALUES")
    db.close()
    positions = cluster.wait_replicated()
    assert set(positions.values()) == {positions["node3"]}


def test_a_stopped_primary_hands_over_and_rejoins_as_a_replica(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(instances=2, lease="consul")
    _seed(cluster, "node1")
    cluster.wait_replicated()
    cluster.stop_node("node1")  # SIGTERM: LiteFS releases its lease
    assert cluster.wait_primary("node2", timeout=10) == "node2"
    cluster.start_node("node1")
    cluster.wait_primary("node2")
    assert _roles(cluster, ["node1"]) == {"node1": (Role.REPLICA, "node2")}
    assert cluster.wait_replicated()["node1"] == cluster.position("node2")


def test_litefs_refuses_to_promote_a_non_candidate(litefs_real_cluster: LiteFSClusterFactory) -> None:
    import urllib.error
    import urllib.request

    cluster = litefs_real_cluster(instances=2, lease="static")
    request = urllib.request.Request(cluster.nodes["node2"].api_url + "/promote", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    refused.value.close()
    assert refused.value.code == 409
    info = cluster.info("node2")
    assert (info["isPrimary"], info["candidate"], info["primary"]["hostname"]) == (False, False, "node1")


# -- the CLI on real mounts --------------------------------------------------------------


def _cli_args(cluster: LiteFSCluster, node: str, command: str, *args: str) -> list[str]:
    mount = ["--dir", cluster.mount_dir(node), "--instance-id", node, "--database", "app.db"]
    return [sys.executable, "-m", "litefs_route", command, *mount, *args]


def _cli(cluster: LiteFSCluster, node: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli_args(cluster, node, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k not in ("LITEFS_DIR", "FLY_MACHINE_ID")},
    )


def _status(cluster: LiteFSCluster, node: str) -> dict[str, Any]:
    done = _cli(cluster, node, "status", "--json")
    assert done.returncode == EXIT_OK, done.stderr
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


def test_cli_status_wait_and_exec_on_real_mounts(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(instances=2, lease="consul")
    _seed(cluster, "node1")
    txid = cluster.wait_replicated()["node1"]

    primary, replica = _status(cluster, "node1"), _status(cluster, "node2")
    assert (primary["role"], primary["primary"], primary["lag_ms"], primary["txid"]) == ("primary", "node1", 0, txid)
    assert (replica["role"], replica["primary"], replica["txid"]) == ("replica", "node1", txid)

    assert _cli(cluster, "node1", "wait", "--primary", "--timeout", "0").returncode == EXIT_OK
    assert _cli(cluster, "node2", "wait", "--primary", "--timeout", "0.2").returncode == EXIT_TIMEOUT
    assert _cli(cluster, "node2", "wait", "--synced", "--max-lag", "5000", "--timeout", "10").returncode == EXIT_OK
    assert _cli(cluster, "node2", "wait", "--txid", str(txid), "--timeout", "0").returncode == EXIT_OK
    assert _cli(cluster, "node2", "wait", "--txid", str(txid + 1), "--timeout", "0.2").returncode == EXIT_TIMEOUT

    ran = _cli(cluster, "node1", "exec", "--if-primary", "--", sys.executable, "-c", "print('ran here')")
    skipped = _cli(cluster, "node2", "exec", "--if-primary", "--", sys.executable, "-c", "print('ran here')")
    assert (ran.returncode, ran.stdout) == (EXIT_OK, "ran here\n")
    assert (skipped.returncode, skipped.stdout) == (EXIT_OK, "")
    assert "skipped" in skipped.stderr

    # A wait for a TXID that a write on the primary then reaches.
    waiter = subprocess.Popen(
        _cli_args(cluster, "node2", "wait", "--txid", str(txid + 1), "--timeout", "30"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert waiter.stderr is not None
    assert "waiting" in waiter.stderr.readline()
    with sqlite3.connect(cluster.db_path("node1")) as db:
        db.execute("INSERT INTO t DEFAULT VALUES")
    db.close()
    waiter.communicate(timeout=30)
    assert waiter.returncode == EXIT_OK


def test_cli_during_an_election(litefs_real_cluster: LiteFSClusterFactory) -> None:
    cluster = litefs_real_cluster(instances=2, lease="consul", consul_ttl=10.0)
    cluster.wait_replicated()
    # Until node2 has its first heartbeat from node1, its .lag says "never heard" and
    # would stay so after the kill (real LiteFS: no timestamp before the "ready" frame).
    wait_until(
        lambda: parse_lag(cluster.read("node2", ".lag") or b"") not in (None, NO_PRIMARY_LAG),
        what="node2's first heartbeat from node1",
    )
    cluster.kill_node("node1")
    _watch_until(cluster, ["node2"], lambda r: r["node2"][0] is Role.NO_PRIMARY)

    assert _status(cluster, "node2")["role"] == "no-primary"
    refused = _cli(cluster, "node2", "exec", "--if-primary", "--", sys.executable, "-c", "print('ran')")
    assert (refused.returncode, refused.stdout) == (EXIT_NO_PRIMARY, "")
    # `wait --primary` on the survivor returns once the dead primary's lease expired and it took over.
    waited = _cli(cluster, "node2", "wait", "--primary", "--timeout", "40")
    assert waited.returncode == EXIT_OK, waited.stderr
    assert _status(cluster, "node2")["role"] == "primary"
    ran = _cli(cluster, "node2", "exec", "--if-primary", "--wait", "5", "--", sys.executable, "-c", "print('ran')")
    assert (ran.returncode, ran.stdout) == (EXIT_OK, "ran\n")


# -- litefs-route dev --litefs ------------------------------------------------------------

DEV_APP = "tests.devcluster_apps.asgi_app:app"


def _start_dev(*args: str, stdin: int) -> tuple[subprocess.Popen[str], list[str]]:
    """``litefs-route dev ARGS`` on real LiteFS, and its output up to the "ready" line."""
    from litefs_route_devcluster.pytest_plugin import require_litefs

    require_litefs()
    return start_dev(*args, stdin=stdin)


def test_dev_command_runs_real_litefs() -> None:
    process, lines = _start_dev(DEV_APP, "--litefs", "--instances", "2", stdin=subprocess.PIPE)
    with process:
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            assert "real LiteFS v0.5.14" in "".join(lines)
            mounts = [m[1] for line in lines if (m := re.search(r"\s(/\S+/mnt)$", line))]
            assert len(mounts) == 2
            assert all(is_mounted(m) for m in mounts)
            process.stdin.write("promote node2\nkill node2\nstatus\nstart node2\nquit\n")
            process.stdin.flush()
            out = process.stdout.read()
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert "promote node2: primary is now node2" in out
    assert "kill node2: primary is now node1" in out
    assert re.search(r"node2\s+replica\s+stopped", out)
    assert "start node2: primary is now node1" in out
    assert out.rstrip().endswith("stopped")
    assert not any(is_mounted(m) for m in mounts)


def test_dev_command_killed_hard_leaves_no_mount_process_or_folder() -> None:
    from litefs_route_devcluster import wait_for
    from litefs_route_devcluster.reaper import mounts_under

    process, lines = _start_dev(DEV_APP, "--litefs", "--instances", "2", stdin=subprocess.DEVNULL)
    with process:
        try:
            [base] = [m[1] for line in lines if (m := re.match(r"Logs: (\S+)/logs$", line.strip()))]
            assert len(mounts_under(base)) == 2
            process.kill()
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
    wait_for(lambda: not mounts_under(base) and not os.path.exists(base), timeout=30, message="left behind")
    assert not [p for p in _litefs_processes() if base in p]


def _litefs_processes() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue
    return [c for c in found if "litefs" in c and " mount " in c]


def test_dev_command_demo_does_what_its_banner_says() -> None:
    """The bundled demo on real LiteFS: the form posted on a replica lands on the primary, and reads see it."""
    import httpx

    process, lines = _start_dev(stdin=subprocess.PIPE)
    with process:
        try:
            assert process.stdin is not None
            banner = "".join(lines)
            assert "real LiteFS v0.5.14" in banner
            front = lines[-1].split()[-1]
            with httpx.Client(base_url=front, timeout=30) as client:
                # What the banner suggests: post the form on a replica.
                posted = client.post("/entries", data={"text": "hello"}, headers={"fly-force-instance-id": "node2"})
                assert (posted.status_code, posted.headers["location"]) == (303, "/")
                assert posted.headers["fly-instance"] == "node1"  # replayed to the primary
                for node in ("node2", "node3"):  # read your writes, on every replica, at once
                    page = client.get("/", headers={"fly-force-instance-id": node})
                    assert "hello" in page.text, node
                    assert f"This is instance <b>{node}</b>" in page.text
            process.stdin.write("quit\n")
            process.stdin.flush()
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                process.kill()


# -- what the app logs while the primary moves -------------------------------------------


@pytest.mark.parametrize("follow", ["event-stream", "polling"])
def test_a_killed_primary_is_logged_once_per_change_by_each_replica(
    litefs_real_cluster: LiteFSClusterFactory, follow: str
) -> None:
    """A survivor's app logs each change of the state it routes on once, not each flicker of the mount.

    While the dead primary's lease runs out, a replica's LiteFS names it again
    on each reconnect attempt (docs/exactly-once.md): the readings alternate
    replica/no-primary, and the event stream pushes each of them (polling,
    every 50 ms, the mount catches some).
    """
    import httpx

    env = {"LITEFS_API_URL": "off"} if follow == "polling" else {}
    cluster = litefs_real_cluster("tests.devcluster_apps.asgi_app:app", instances=3, lease="consul", env=env)
    cluster.wait_replicated()
    survivors = ["node2", "node3"]
    with httpx.Client(base_url=cluster.front_url, timeout=30) as client:
        for node in survivors:  # each survivor's app routes on node1 as primary
            done = client.post("/write", data={"id": f"before-{node}"}, headers={FORCE: node})
            assert (done.status_code, done.json()["instance"]) == (200, "node1"), done.text

        cluster.kill_node("node1")

        def elected() -> bool:
            for node in survivors:  # reads: each survivor's app sees the election (polling: reads the mount)
                assert client.get("/whoami", headers={FORCE: node}).status_code == 200
            return cluster.primary in survivors

        wait_until(elected, timeout=30, what="a survivor to take the lease")
        new_primary = cluster.wait_primary()
        [replica] = [n for n in survivors if n != new_primary]
        # The replica's app routes on the new primary: a write there lands on it.
        done = client.post("/write", data={"id": "after"}, headers={FORCE: replica})
        assert (done.status_code, done.json()["instance"]) == (200, new_primary), done.text
    cluster.kill_app(replica)  # its whole output is in its log now
    log = Path(cluster.instances[replica].log_path).read_text(errors="replace")
    changes = re.findall(r"^(?:WARNING|ERROR) litefs_route: LiteFS role (\S+ -> \S+)", log, re.MULTILINE)
    # The one change a user would name at WARNING: the primary was lost (its return is INFO).
    assert changes == ["replica -> no-primary"], log
