"""Fixtures shared by the namespace tests of one area (the root ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tabby.bgp.testing import BgpLab
    from tabby.lab.testing import WorkloadsLab


@pytest.fixture(scope="module")
def bpf_object() -> Path:
    """The IP-in-IP BPF object, built once per test module; skips when it cannot be built."""
    from tabby.dataplane.ipip import build as ipip_build

    try:
        return ipip_build.build()
    except ipip_build.BuildError as exc:
        pytest.skip(f"cannot build the IP-in-IP BPF object: {exc}")


@pytest.fixture
def bgp_lab(topology: Callable[..., Any], tmp_path: Path) -> Iterator[BgpLab]:
    """A BgpLab on a fresh topology, closed after the test (the topology is torn down by
    the `topology` fixture)."""
    from tabby.bgp.testing import BgpLab

    bgp = BgpLab(topology(), tmp_path / "bgp")
    yield bgp
    bgp.close()


@pytest.fixture(scope="module")
def workloads_lab() -> Iterator[WorkloadsLab]:
    """One node namespace with four probe-serving workloads, per test module
    (`tabby.lab.testing`)."""
    import os

    from tabby.lab.testing import workloads_lab

    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with workloads_lab() as lab:
        yield lab
