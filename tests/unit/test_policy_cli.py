"""`tabby policy explain|matrix` against a real sqlite datastore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tabby.datastore.client")
pytest.importorskip("tabby.cli.resources")

from tabby.cli.main import main  # noqa: E402

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  orchestrator: k8s
  node: node1
  interfaceName: cali0a
  ipNetworks: [10.1.0.1/32]
  ports: [{name: http, protocol: TCP, port: 8080}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: b, namespace: x, labels: {app: client}}
spec: {orchestrator: k8s, node: node1, interfaceName: cali0b, ipNetworks: [10.1.0.2/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: c, namespace: y, labels: {app: client}}
spec: {orchestrator: k8s, node: node1, interfaceName: cali0c, ipNetworks: [10.2.0.3/32]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {}}]
    ports: [{port: http}]
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.block-81}
spec:
  tier: security
  selector: all()
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: [81]}}
  - {action: Pass}
"""


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'tabby.db'}"
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    assert main(["--datastore", url, "apply", "-f", str(manifest)]) == 0
    return url


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_explain_json_allow_and_deny(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["policy", "explain", "--from", "x/b", "--to", "x/a",
                            "--protocol", "TCP", "--port", "8080", "-o", "json",
                            "--datastore", store])
    assert out["verdict"] == "Allow"
    assert out["ingress"]["decider"] == {"tier": "default", "policy": "x/knp.default.web",
                                         "rule": 0, "action": "Allow"}
    assert out["ingress"]["steps"][0] == {"tier": "security", "policy": "security.block-81",
                                          "rule": 1, "action": "Pass"}
    assert out["egress"]["decider"] == {"profile": "kns.x", "rule": 0, "action": "Allow"}

    out = run_json(capsys, ["--datastore", store, "policy", "explain", "--from", "y/c",
                            "--to", "x/a", "--port", "8080", "-o", "json"])
    assert out["verdict"] == "Deny"
    assert out["ingress"]["decider"] == {"tier": "default", "default": "deny: end of tier"}

    out = run_json(capsys, ["--datastore", store, "policy", "explain", "--from", "x/b",
                            "--to", "x/a", "--port", "81", "-o", "json"])
    assert out["ingress"]["decider"]["policy"] == "security.block-81"


def test_explain_bare_ip(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["--datastore", store, "policy", "explain", "--from", "192.0.2.1",
                            "--to", "x/b", "--port", "80", "-o", "json"])
    assert out["verdict"] == "Allow"
    assert out["egress"]["endpoint"] is None and out["egress"]["ip"] == "192.0.2.1"


def test_explain_text(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--datastore", store, "policy", "explain", "--from", "y/c", "--to", "x/a",
                 "--port", "8080"]) == 0
    text = capsys.readouterr().out
    assert "TCP y/c (10.2.0.3) -> x/a (10.1.0.1) port 8080: Deny" in text
    assert "tier default policy x/knp.default.web: no rule matched" in text
    assert "decided by: tier default: deny: end of tier" in text


def test_explain_unknown_endpoint(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--datastore", store, "policy", "explain", "--from", "x/nope", "--to", "x/a",
                 "--port", "80"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: unknown workload endpoint 'x/nope' "
                   "(namespace/name, host endpoint name or IP)")


def test_matrix_json(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["--datastore", store, "policy", "matrix", "--port", "8080",
                            "-o", "json"])
    assert out == {
        "x/a": {"x/b": "Allow", "y/c": "Allow"},
        "x/b": {"x/a": "Allow", "y/c": "Allow"},
        "y/c": {"x/a": "Deny", "x/b": "Allow"},
    }
    out = run_json(capsys, ["--datastore", store, "policy", "matrix", "--port", "8080",
                            "-n", "x", "-o", "json"])
    assert out == {"x/a": {"x/b": "Allow"}, "x/b": {"x/a": "Allow"}}


def test_matrix_table(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--datastore", store, "policy", "matrix", "--port", "81", "-A"]) == 0
    text = capsys.readouterr().out
    assert "Deny" in text and "0 of 6 pairs allowed" in text


def test_matrix_bad_input(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--datastore", store, "policy", "matrix", "--port", "0"]) == 1
    assert "--port: invalid port 0" in capsys.readouterr().err
    assert main(["--datastore", store, "policy", "matrix", "--protocol", "ICMP", "--port", "80"]) == 1
    assert "--port: protocol ICMP has no ports" in capsys.readouterr().err
    assert main(["--datastore", store, "policy", "matrix", "--protocol", "XTP"]) == 1
    assert "--protocol: unknown protocol 'XTP'" in capsys.readouterr().err
