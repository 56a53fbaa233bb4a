"""The chart's render is accepted by the real API server: every object, with the
optional parts switched on, passes a server-side dry run (schema, defaulting,
admission, and the CRDs' own validation for the sample objects)."""

from __future__ import annotations

import pytest
import yaml

from hybrid_compute.dev.manifests import helm_template
from tests.conftest import REPOSITORY_ROOT, TestCluster

pytestmark = pytest.mark.cluster

# The peering kind's CRD is not in the test cluster (the RBAC test installs and
# removes it), and ServiceMonitor's belongs to the Prometheus Operator.
NOT_SERVED_HERE = {"ClusterKopfPeering", "ServiceMonitor"}


@pytest.mark.parametrize("toggles", [(), ("samples.enabled=true", "postgres.enabled=true",
                                          "agent.runtimeClassName=nvidia")])
def test_the_api_server_accepts_every_rendered_object(k8s: TestCluster, namespace: str,
                                                      toggles: tuple[str, ...]) -> None:
    args = [arg for toggle in toggles for arg in ("--set", toggle)]
    rendered = helm_template(REPOSITORY_ROOT, args, release="dry-run", namespace=namespace)
    objects = [d for d in yaml.safe_load_all(rendered)
               if d and d["kind"] not in NOT_SERVED_HERE]
    result = k8s.kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts",
                         "--field-manager=chart-dry-run", "-f", "-",
                         input_text=yaml.safe_dump_all(objects), check=False)
    assert result.returncode == 0, result.stderr
    accepted = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(objects), result.stdout
