"""Every process the stack starts is stopped: `down` after `up`, and `run` on
Ctrl-C or SIGTERM; the emulator's Java child included."""

import json
import os
import signal
import subprocess
import sys

import pytest

from fakegcp_lib import STACK, Stack, listening, processes_with, run_stack, two_free_ports, wait_for


def assert_nothing_left(state):
    for name, proc in state["processes"].items():
        assert not listening(proc["port"]), f"{name} still listens on {proc['port']}"
        stat = f"/proc/{proc['pid']}/stat"
        if os.path.exists(stat):
            text = open(stat).read()
            assert text[text.rindex(")") + 2] == "Z", f"{name} (pid {proc['pid']}) still runs"
    pubsub_port = state["processes"]["pubsub"]["port"]
    assert processes_with(f"--port={pubsub_port} ") == [], "a java emulator is left behind"
    assert [p for p in processes_with(f"-port {state['processes']['gcs']['port']} ")
            if "fake-gcs-server" in p[1]] == []


def test_down_stops_everything_and_is_idempotent(tmp_path):
    pubsub_port, gcs_port = two_free_ports()
    stack = Stack(tmp_path / "stack.json", "--pubsub-port", str(pubsub_port),
                  "--gcs-port", str(gcs_port))
    try:
        stack.up()
        assert stack.env["PUBSUB_EMULATOR_HOST"] == f"127.0.0.1:{pubsub_port}"
        assert stack.env["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{gcs_port}"
        state = json.loads((tmp_path / "stack.json").read_text())
        assert listening(pubsub_port) and listening(gcs_port)
        # the emulator runs as java (the script execs it), in its own process group
        java = processes_with(f"--port={pubsub_port} ")
        assert java and all("java" in cmd for _, cmd in java)
        # a second `up` on the same state refuses and leaves the stack alone
        again = run_stack(tmp_path / "stack.json", "up")
        assert again.returncode == 1 and "already running" in again.stderr
        assert listening(pubsub_port)
    finally:
        stack.down()
    assert_nothing_left(state)
    assert not (tmp_path / "stack.json").exists()
    done = stack.down()
    assert "no stack running" in done.stderr
    env = run_stack(tmp_path / "stack.json", "env")
    assert env.returncode == 1 and "no stack running" in env.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_run_stops_everything_on_signal(tmp_path, sig):
    state_file = tmp_path / "stack.json"
    proc = subprocess.Popen([sys.executable, str(STACK), "--state", str(state_file), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def started():
            if proc.poll() is not None:
                raise AssertionError(f"run exited early: {proc.stderr.read()}")
            try:
                return "env" in json.loads(state_file.read_text())
            except (OSError, ValueError):
                return False
        wait_for(started, timeout=90, what="the stack to run")
        state = json.loads(state_file.read_text())
        assert all(listening(p["port"]) for p in state["processes"].values())
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            run_stack(state_file, "down")
    assert proc.returncode == 0, err
    assert "export PUBSUB_EMULATOR_HOST=" in out
    assert_nothing_left(state)
    assert not state_file.exists()


def test_down_cleans_up_after_a_killed_run(tmp_path):
    """If `run` itself is killed (SIGKILL: no cleanup), `down` with its state
    file still stops the emulators."""
    state_file = tmp_path / "stack.json"
    proc = subprocess.Popen([sys.executable, str(STACK), "--state", str(state_file), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The "env" key, written once every process is ready (the text "env" is in any
        # venv path of a process's argv as soon as it starts).
        wait_for(lambda: state_file.exists() and "env" in json.loads(state_file.read_text()),
                 timeout=90, what="the stack to run")
        state = json.loads(state_file.read_text())
        proc.kill()
        proc.wait()
        assert all(listening(p["port"]) for p in state["processes"].values())
    finally:
        done = run_stack(state_file, "down")
    assert done.returncode == 0, done.stderr
    assert_nothing_left(state)
