"""The resource verbs end to end through `tabby.cli.main.main`, on an sqlite datastore."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tabby.cli.main import main

MANIFESTS = Path(__file__).parent / "manifests" / "calico-sample.yaml"

POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-%d}
spec: {cidr: 10.%d.0.0/16}
"""


@pytest.fixture
def ds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/tabby.db"
    monkeypatch.setenv("TABBY_DATASTORE", url)
    return url


def run(*argv: str) -> int:
    return main(list(argv))


def get_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    assert run("get", *argv, "-o", "json") == 0
    return json.loads(capsys.readouterr().out)


def test_calico_manifests_apply_and_read_back_same_spec(ds, capsys):
    assert run("apply", "-f", str(MANIFESTS)) == 0
    docs = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    for doc in docs:
        kind = doc["kind"] if doc["apiVersion"].startswith("projectcalico") else {
            "Namespace": "namespace", "NetworkPolicy": "k8snetworkpolicy"}[doc["kind"]]
        argv = [kind, doc["metadata"]["name"]]
        if doc["metadata"].get("namespace"):
            argv += ["-n", doc["metadata"]["namespace"]]
        got = get_json(capsys, *argv)
        # Every field the user wrote comes back as written (defaults may be added).
        for field, value in (doc.get("spec") or {}).items():
            assert got["spec"][field] == value, (kind, field)
        assert got["metadata"]["resourceVersion"]


def test_get_yaml_reapplies_unchanged_and_stale_version_conflicts(ds, capsys, tmp_path):
    (tmp_path / "p.yaml").write_text(POOL % (1, 1))
    assert run("apply", "-f", str(tmp_path / "p.yaml")) == 0
    capsys.readouterr()
    assert run("get", "ippool", "pool-1", "-o", "yaml") == 0
    exported = capsys.readouterr().out
    (tmp_path / "out.yaml").write_text(exported)
    assert run("apply", "-f", str(tmp_path / "out.yaml")) == 0  # re-applies as is
    # The exported resourceVersion is now stale: replacing with it is a conflict.
    assert run("replace", "-f", str(tmp_path / "out.yaml")) == 1
    assert "stale" in capsys.readouterr().err


def test_bad_third_of_five_documents_writes_nothing(ds, capsys, tmp_path):
    docs = [POOL % (i, i) for i in range(1, 6)]
    docs[2] = docs[2].replace("10.3.0.0/16", "10.3.0.0/33")
    (tmp_path / "five.yaml").write_text("---\n".join(docs))
    assert run("apply", "-f", str(tmp_path / "five.yaml")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "document 3" in err and "spec.cidr" in err and "10.3.0.0/33" in err
    assert get_json(capsys, "ippool")["items"] == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("kind: [unclosed", "five.yaml"),
        ("apiVersion: projectcalico.org/v3\nkind: Bogus\nmetadata: {name: a}\n", "Bogus"),
        (POOL.replace("cidr:", "cidrr:") % (1, 1), "cidrr"),
    ],
)
def test_invalid_input_is_one_line_exit_1(ds, capsys, tmp_path, text, needle):
    (tmp_path / "five.yaml").write_text(text)
    assert run("create", "-f", str(tmp_path / "five.yaml")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_create_existing_and_replace_missing_write_nothing(ds, capsys, tmp_path):
    (tmp_path / "a.yaml").write_text(POOL % (1, 1))
    (tmp_path / "ab.yaml").write_text(POOL % (1, 1) + "---\n" + POOL % (2, 2))
    assert run("create", "-f", str(tmp_path / "a.yaml")) == 0
    assert run("create", "-f", str(tmp_path / "ab.yaml")) == 1
    assert "already exists" in capsys.readouterr().err
    assert [i["metadata"]["name"] for i in get_json(capsys, "ippool")["items"]] == ["pool-1"]
    assert run("create", "--skip-exists", "-f", str(tmp_path / "ab.yaml")) == 0
    assert run("delete", "ippool", "pool-2") == 0
    assert run("replace", "-f", str(tmp_path / "ab.yaml")) == 1
    assert "does not exist" in capsys.readouterr().err


def test_directory_and_stdin(ds, capsys, tmp_path, monkeypatch):
    d = tmp_path / "dir"
    d.mkdir()
    (d / "1.yaml").write_text(POOL % (1, 1))
    (d / "2.json").write_text(json.dumps(yaml.safe_load(POOL % (2, 2))))
    (d / "README.txt").write_text("not a manifest")
    assert run("apply", "-f", str(d)) == 0
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(POOL % (3, 3)))
    assert run("apply", "-f", "-") == 0
    names = [i["metadata"]["name"] for i in get_json(capsys, "ippools")["items"]]
    assert names == ["pool-1", "pool-2", "pool-3"]


def test_patch_and_label(ds, capsys, tmp_path):
    (tmp_path / "a.yaml").write_text(POOL % (1, 1))
    assert run("apply", "-f", str(tmp_path / "a.yaml")) == 0
    assert run("patch", "ippool", "pool-1", "-p", '{"spec": {"natOutgoing": true}}') == 0
    assert get_json(capsys, "ippool", "pool-1")["spec"]["natOutgoing"] is True
    # A patch that makes the resource invalid is refused and changes nothing.
    assert run("patch", "ippool", "pool-1", "-p", '{"spec": {"ipipMode": "Sometimes"}}') == 1
    assert "ipipMode" in capsys.readouterr().err
    assert get_json(capsys, "ippool", "pool-1")["spec"]["ipipMode"] == "Never"

    assert run("label", "ippool", "pool-1", "zone=a") == 0
    assert run("label", "ippool", "pool-1", "zone=b") == 1  # needs --overwrite
    assert run("label", "ippool", "pool-1", "zone=b", "--overwrite") == 0
    assert get_json(capsys, "ippool", "pool-1")["metadata"]["labels"] == {"zone": "b"}
    assert run("label", "ippool", "pool-1", "--remove", "zone") == 0
    assert not get_json(capsys, "ippool", "pool-1")["metadata"].get("labels")


def test_namespaces_and_delete_by_file(ds, capsys):
    assert run("apply", "-f", str(MANIFESTS)) == 0
    assert get_json(capsys, "networkpolicy")["items"] == []  # -n default
    all_ns = get_json(capsys, "networkpolicy", "-A")["items"]
    assert {i["metadata"]["namespace"] for i in all_ns} == {"production"}
    assert run("delete", "-f", str(MANIFESTS)) == 0
    assert get_json(capsys, "ippool")["items"] == []
    assert run("delete", "ippool", "nope") == 1
    assert run("delete", "ippool", "nope", "--skip-not-exists") == 0


def test_unknown_kind_and_missing_name(ds, capsys):
    assert run("get", "widgets") == 1
    assert "widgets" in capsys.readouterr().err
    assert run("get", "ippool", "absent") == 1
    assert "absent" in capsys.readouterr().err


def test_unreachable_datastore_exits_2_without_traceback():
    # A port nothing listens on, on loopback.
    proc = subprocess.run(
        [sys.executable, "-m", "tabby.cli.main", "--datastore", "etcd://127.0.0.1:1", "get",
         "ippool"], capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_datastore_url_is_one_line(capsys):
    assert run("--datastore", "mysql://x", "get", "ippool") == 1
    assert "mysql://x" in capsys.readouterr().err


def test_bad_flag_is_one_line_exit_1(capsys):
    with pytest.raises(SystemExit) as exc:
        run("get", "ippool", "-o", "bogus")
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "-o/--output" in err and "bogus" in err
