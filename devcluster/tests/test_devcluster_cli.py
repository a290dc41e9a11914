"""The dev cluster's command (``devcluster.cli``, ``python -m litefs_route_devcluster``), run as a real process:
its prompt, signals and clean-up.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from litefs_route_devcluster import port_open, wait_for
from tests.support import ASGI_APP, ROOT, start_dev


def _start_cli(*args: str, stdin: int, stderr: int = subprocess.DEVNULL) -> tuple[subprocess.Popen[str], list[str]]:
    """The module entry point, on the imitation with two instances."""
    entry = ("litefs_route_devcluster",)
    return start_dev(ASGI_APP, "--imitation", "--instances", "2", *args, stdin=stdin, stderr=stderr, entry=entry)


def test_cli_interactive_commands() -> None:
    process, lines = _start_cli(stdin=subprocess.PIPE)
    with process:
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            assert lines
            assert lines[-1].startswith("ready: front http://127.0.0.1:")
            assert any("fly-force-instance-id" in line for line in lines)  # what to try
            process.stdin.write("promote node2\nlag 0.5\nstatus\nquit\n")
            process.stdin.flush()
            out = process.stdout.read()
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert "primary is now node2" in out
    assert "lag is now 0.5 s" in out
    assert re.search(r"node2\s+primary\s+running", out)
    assert out.rstrip().endswith("stopped")


def test_cli_without_stdin_runs_until_sigterm() -> None:
    process, lines = _start_cli(stdin=subprocess.DEVNULL)
    with process:
        try:
            assert process.stdout is not None
            front_port = int(lines[-1].rsplit(":", 1)[1])
            assert process.stdout.readline() == "stdin closed; running until SIGINT or SIGTERM\n"
            assert port_open("127.0.0.1", front_port)  # still serving after stdin closed
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
            assert process.stdout.read().rstrip().endswith("stopped")
        finally:
            if process.poll() is None:
                process.kill()
    assert not port_open("127.0.0.1", front_port)


def test_cli_a_second_signal_does_not_cut_the_cleanup_short() -> None:
    """`timeout`, a supervisor or an impatient ^C often signal twice: the
    second one, landing while the instances are being stopped, must not kill
    the command before it has stopped them all."""
    process, lines = _start_cli(stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    instance_ports = [int(m[1]) for line in lines if (m := re.search(r"node\d\s.*http://127\.0\.0\.1:(\d+)", line))]
    with process:
        try:
            assert process.stderr is not None
            assert process.stdout is not None
            assert len(instance_ports) == 2
            process.send_signal(signal.SIGTERM)
            for line in process.stderr:
                if "stopping node1" in line:
                    break
            process.send_signal(signal.SIGTERM)  # during the clean-up
            assert process.wait(30) == 0
            assert process.stdout.read().rstrip().endswith("stopped")
        finally:
            if process.poll() is None:
                process.kill()
    assert not any(port_open("127.0.0.1", port) for port in instance_ports)


def test_cli_prompt_answers_mistakes_in_plain_words() -> None:
    process, _ = _start_cli(stdin=subprocess.PIPE)
    with process:
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write("lag abc\npromote nodeX\nfrobnicate\nhelp\nquit\n")
            process.stdin.flush()
            out = process.stdout.read()
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert "error: lag takes a number of seconds, not 'abc'" in out
    assert "error: no instance 'nodeX'; instances: ['node1', 'node2']" in out
    assert "unknown command: 'frobnicate'" in out
    assert "Traceback" not in out
    assert "could not convert" not in out


def test_cli_ctrl_c_exits_130_after_cleaning_up() -> None:
    process, lines = _start_cli(stdin=subprocess.DEVNULL)
    with process:
        try:
            assert process.stdout is not None
            front_port = int(lines[-1].rsplit(":", 1)[1])
            assert process.stdout.readline() == "stdin closed; running until SIGINT or SIGTERM\n"
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 130
            assert process.stdout.read().rstrip().endswith("stopped")
        finally:
            if process.poll() is None:
                process.kill()
    assert not port_open("127.0.0.1", front_port)


def test_cli_busy_port_is_one_clear_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "litefs_route_devcluster", ASGI_APP, "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert f"port {port} is in use" in done.stderr
    assert "--port 0" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("how", ["kill-9", "sighup"])
def test_cli_killed_or_hung_up_leaves_no_instance_and_no_folder(how: str) -> None:
    """The reaper stops the instances still working in the folder, then removes it."""
    process, lines = _start_cli(stdin=subprocess.DEVNULL)
    instance_ports = [int(m[1]) for line in lines if (m := re.search(r"node\d\s.*http://127\.0\.0\.1:(\d+)", line))]
    [base] = [m[1] for line in lines if (m := re.match(r"Logs: (\S+)/logs$", line.strip()))]
    with process:
        try:
            assert len(instance_ports) == 2
            assert os.path.isdir(base)
            process.send_signal(signal.SIGKILL if how == "kill-9" else signal.SIGHUP)
            assert process.wait(30) == (-signal.SIGKILL if how == "kill-9" else 128 + signal.SIGHUP)
        finally:
            if process.poll() is None:
                process.kill()
    wait_for(
        lambda: not any(port_open("127.0.0.1", port) for port in instance_ports) and not os.path.exists(base),
        timeout=20,
        message="instances or their folder outlived the command",
    )
