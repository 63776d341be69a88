"""Bad input, a missing dependency, no root, a name in use, an interrupted `up` and a
crashed one: one clear message (no traceback) and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from labtools import recorded_pids, wait_until

from tabby.cli.main import main
from tabby.lab import checks
from tabby.lab import netns as nsops


def up_args(name: str, *extra: str) -> list[str]:
    return ["lab", "up", "--name", name, *extra]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--name", "Bad-Name"], "--name: invalid lab name 'Bad-Name'"),
        (["--name", "a-b"], "--name: invalid lab name 'a-b'"),
        (["--nodes", "0"], "--nodes: 0 out of range"),
        (["--workloads-per-node", "99"], "--workloads-per-node: 99 out of range"),
    ],
)
def test_bad_input_is_one_line(
    labs_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    rc = main(["lab", "up", *argv])
    err = capsys.readouterr().err
    assert rc == 1 and words in err and "Traceback" not in err
    assert not labs_dir.exists() or not any(labs_dir.iterdir())


def test_ipip_without_support_says_why(
    lab_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from tabby.dataplane.ipip import kernel_support

    if kernel_support.detect() == "kernel":
        pytest.skip("this kernel has the ipip module: IP-in-IP needs no BPF object")
    # No BPF object and no clang to build one: the agent could not encapsulate.
    monkeypatch.setenv("TABBY_IPIP_BPF_OBJECT", str(tmp_path / "bpf" / "ipip.o"))
    monkeypatch.setenv("PATH", str(tmp_path))
    for encap in ("ipip", "ipip-crosssubnet"):
        rc = main(up_args(lab_name, "--encap", encap))
        err = capsys.readouterr().err
        assert rc == 1 and "--encap ipip: this kernel has no ipip module" in err
        assert "clang not found" in err and "Traceback" not in err
    assert nsops.list_netns(lab_name + "-") == []


def test_not_root_and_missing_tools(
    lab_name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(checks, "ETCD_TOOLS", {"etcd-not-here": "etcd-server"})
        rc = main(up_args(lab_name, "--datastore", "etcd"))
    err = capsys.readouterr().err
    assert rc == 1 and "missing etcd-not-here" in err and "apt-get install etcd-server" in err
    with monkeypatch.context() as m:
        m.setattr(os, "geteuid", lambda: 1000)
        rc = main(up_args(lab_name))
    err = capsys.readouterr().err
    assert rc == 1 and "needs root" in err and "sudo" in err
    assert nsops.list_netns(lab_name + "-") == []


def test_name_used_by_foreign_namespaces(
    lab_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = f"{lab_name}-other"
    nsops.add_netns(foreign)
    try:
        rc = main(up_args(lab_name, "--nodes", "1"))
        err = capsys.readouterr().err
        assert rc == 1 and "is in use" in err and foreign in err
        assert nsops.netns_exists(foreign)  # not ours: never touched
    finally:
        nsops.del_netns(foreign)


def _spawn_up(name: str, labs_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TABBY_LAB_DIR": str(labs_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "tabby.cli.main", *up_args(name, "--nodes", "2")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _state(labs_dir: Path, name: str) -> dict:
    try:
        return json.loads((labs_dir / name / "lab.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


@pytest.mark.slow
def test_sigterm_during_up_removes_everything(lab_name: str, labs_dir: Path) -> None:
    proc = _spawn_up(lab_name, labs_dir)
    try:
        started = wait_until(
            lambda: any(n.get("pid") for n in _state(labs_dir, lab_name).get("nodes", [])),
            timeout=60, interval=0.05,
        )  # fmt: skip
        assert started, "agents never started"
        pids = recorded_pids(labs_dir / lab_name)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert nsops.list_netns(lab_name + "-") == []
    assert not (labs_dir / lab_name).exists()
    assert [p for p, st in pids if nsops.pid_alive(p, st)] == []


@pytest.mark.slow
def test_down_after_a_crashed_up(
    lab_name: str, labs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = _spawn_up(lab_name, labs_dir)
    try:
        wired = wait_until(
            lambda: any(w.get("ip") for w in _state(labs_dir, lab_name).get("workloads", [])),
            timeout=60, interval=0.05,
        )  # fmt: skip
        assert wired, "workloads never wired"
    finally:
        proc.kill()  # SIGKILL: no clean-up of its own
        proc.communicate()
    pids = recorded_pids(labs_dir / lab_name)
    assert nsops.list_netns(lab_name + "-") and pids
    # Worse than a crash: the topology's state is damaged too. `down` still finds the lab
    # by its lab.json and its name.
    (labs_dir / lab_name / "topology.json").write_text("{not json")
    rc = main(["lab", "down", "--name", lab_name])
    out, err = capsys.readouterr()
    assert rc == 0 and "verified nothing is left" in out
    assert "topology state unreadable" in err
    assert nsops.list_netns(lab_name + "-") == []
    assert [p for p, st in pids if nsops.pid_alive(p, st)] == []
    assert main(["lab", "down", "--name", lab_name]) == 0
    assert "not up" in capsys.readouterr().out
