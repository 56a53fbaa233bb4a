"""What ``hybrid-compute run`` sets up before kopf starts: the kubeconfig that
``--kubeconfig`` names reaches kopf's own login, and kopf can name the process for
peering when its uid has no name (the image runs as 65532, with no passwd entry)."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kopf._core.engines import peering
from kubernetes import client, config

from hybrid_compute.control import kube
from hybrid_compute.control.handlers import set_peering_identity


@pytest.fixture
def client_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restores what the tests change in the process and the client library."""
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/before")
    monkeypatch.setattr(config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION",
                        config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION)
    previous = client.Configuration.get_default_copy()
    yield
    client.Configuration.set_default(previous)


def test_the_kubeconfig_flag_reaches_logins_that_read_the_default(
        tmp_path: Path, client_defaults: None) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "here",
        "clusters": [{"name": "here", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "here", "user": {"token": "t"}}],
        "contexts": [{"name": "here", "context": {"cluster": "here", "user": "here"}}],
    }))
    kube.use_kubeconfig(str(kubeconfig))
    # What kopf's login through the client library calls: no path, the default.
    config.load_kube_config()
    assert client.Configuration.get_default_copy().host == "https://127.0.0.1:6443"


def test_kopf_names_a_process_whose_uid_has_no_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_name() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_name)
    monkeypatch.setenv("POD_ID", "placeholder")
    monkeypatch.delenv("POD_ID")
    monkeypatch.delenv("POD_NAME", raising=False)
    set_peering_identity()
    identity = peering.detect_own_id(manual=False)
    assert identity.startswith(f"{socket.gethostname()}_"), identity


def test_a_pod_id_given_by_the_deployment_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_ID", "operator-7d9f")
    set_peering_identity()
    assert peering.detect_own_id(manual=False) == "operator-7d9f"
