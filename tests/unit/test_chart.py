"""The Helm chart, rendered by a real helm (built from Go modules by ``make toolchain``,
or on first use here): its structure, its RBAC, and the LiteLLM contract."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.api.routepolicy import RoutePolicySpec
from hybrid_compute.cli import build_parser
from hybrid_compute.dev.helm import ensure_helm
from hybrid_compute.dev.manifests import CHART_FOLDER, RenderError, helm_template
from hybrid_compute.upstream import LLAMA_CPP

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / CHART_FOLDER
OUR_CRDS = {"modelslots.hybridcompute.io", "routepolicies.hybridcompute.io",
            "gpuworkloads.hybridcompute.io"}

# (apiGroup, resource, verb) the operator's code uses, from informer.py (list and
# watch), observe.py (get), kube.py and kopf's own needs (CRD scanning, peering).
CLUSTER_PERMISSIONS = {
    *{("hybridcompute.io", kind, verb) for kind in ("modelslots", "gpuworkloads",
                                                    "routepolicies")
      for verb in ("get", "list", "watch")},
    *{("hybridcompute.io", f"{kind}/status", "patch") for kind in ("modelslots",
                                                                  "gpuworkloads",
                                                                  "routepolicies")},
    ("", "nodes", "list"), ("", "nodes", "watch"),
    ("", "pods", "list"), ("", "pods", "watch"),
    ("", "pods/log", "get"),
    *{("apps", "deployments", verb) for verb in ("list", "watch", "create", "patch", "delete")},
    *{("batch", "jobs", verb) for verb in ("list", "watch", "create", "patch", "delete")},
    *{("", "services", verb) for verb in ("list", "watch", "create", "patch")},
    ("", "events", "create"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    *{("kopf.dev", "clusterkopfpeerings", verb) for verb in ("list", "watch", "get", "patch")},
}


@pytest.fixture(scope="module", autouse=True)
def helm() -> Path:
    """The cached helm; built here when ``make toolchain`` has not built it yet."""
    return ensure_helm()


def render(*set_values: str) -> list[dict[str, Any]]:
    args = [arg for value in set_values for arg in ("--set", value)]
    return [doc for doc in yaml.safe_load_all(helm_template(ROOT, args)) if doc]


def only(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(pod_owner: dict[str, Any], name: str) -> dict[str, Any]:
    containers = pod_owner["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def env_of(entry: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in entry.get("env", [])}


def permissions(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"]}


def test_helm_lint_is_clean() -> None:
    result = subprocess.run([str(ensure_helm()), "lint", "--strict", str(CHART)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_the_default_render_holds_operator_litellm_agent_and_crds() -> None:
    documents = render()
    kinds = sorted({d["kind"] for d in documents})
    assert kinds == ["ClusterKopfPeering", "ClusterRole", "ClusterRoleBinding",
                     "CustomResourceDefinition", "DaemonSet", "Deployment", "Role",
                     "RoleBinding", "Service", "ServiceAccount"], kinds
    deployments = {d["metadata"]["name"] for d in documents if d["kind"] == "Deployment"}
    assert deployments == {"hybrid-compute", "litellm"}
    crds = {d["metadata"]["name"] for d in documents if d["kind"] == "CustomResourceDefinition"}
    assert crds == OUR_CRDS | {"clusterkopfpeerings.kopf.dev"}
    namespaced = [d for d in documents if d["kind"] not in (
        "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterKopfPeering")]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"hybrid-compute"}


def test_the_operator_runs_non_root_read_only_with_probes() -> None:
    deployment = only(render(), "Deployment", "hybrid-compute")
    pod = deployment["spec"]["template"]["spec"]
    operator = container(deployment, "operator")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["serviceAccountName"] == "hybrid-compute"
    assert operator["securityContext"] == {"allowPrivilegeEscalation": False,
                                           "readOnlyRootFilesystem": True,
                                           "capabilities": {"drop": ["ALL"]}}
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"health": 8080, "api": 8081, "metrics": 9090}
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Ready only on the leader, so the Service reaches the replica that acts.
    assert operator["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert operator["args"][0] == "run"
    assert {"--health-port=8080", "--api-port=8081", "--metrics-port=9090"} <= set(
        operator["args"])
    assert env_of(operator)["HYBRID_COMPUTE_API_TOKEN"] == {
        "secretKeyRef": {"name": "hybrid-compute-api-token", "key": "token"}}
    # Two loops must never run side by side during an upgrade.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["replicas"] == 1


def test_the_cluster_role_grants_exactly_what_the_operator_does() -> None:
    role = only(render(), "ClusterRole", "hybrid-compute")
    granted = permissions(role)
    assert granted == CLUSTER_PERMISSIONS, (
        f"missing {sorted(CLUSTER_PERMISSIONS - granted)}, "
        f"extra {sorted(granted - CLUSTER_PERMISSIONS)}")
    binding = only(render(), "ClusterRoleBinding", "hybrid-compute")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hybrid-compute",
                                    "namespace": "hybrid-compute"}]


def test_the_litellm_role_reaches_only_its_configmap_and_deployment() -> None:
    role = only(render(), "Role", "hybrid-compute-litellm")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["litellm-config"],
         "verbs": ["get", "create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["litellm"],
         "verbs": ["get", "patch"]},
    ]
    renamed = only(render("litellm.deploymentName=proxy", "litellm.configMapName=proxy-config"),
                   "Role", "hybrid-compute-litellm")
    assert [rule["resourceNames"] for rule in renamed["rules"]] == [["proxy-config"], ["proxy"]]


@pytest.mark.parametrize("toggles", [(), ("peering.enabled=false",),
                                     ("samples.enabled=true", "postgres.enabled=true",
                                      "monitoring.serviceMonitor.enabled=true")])
def test_no_role_reaches_secrets_or_wildcards(toggles: tuple[str, ...]) -> None:
    roles = [d for d in render(*toggles) if d["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for group, resource, verb in permissions(role):
            assert resource != "secrets", f"{role['metadata']['name']} grants {verb} secrets"
            assert "*" not in (group, resource, verb), f"{role['metadata']['name']} has a wildcard"


def test_without_peering_the_operator_runs_standalone_and_needs_no_peering_rights() -> None:
    documents = render("peering.enabled=false")
    assert not [d for d in documents if d["kind"] == "ClusterKopfPeering"]
    assert "--standalone" in container(only(documents, "Deployment", "hybrid-compute"),
                                       "operator")["args"]
    granted = permissions(only(documents, "ClusterRole", "hybrid-compute"))
    assert not {p for p in granted if p[0] == "kopf.dev"}


def test_leader_election_is_on_with_a_lease_role_for_that_lease_only() -> None:
    documents = render()
    operator = container(only(documents, "Deployment", "hybrid-compute"), "operator")
    assert "--leader-election" in operator["args"]
    env = env_of(operator)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    role = only(documents, "Role", "hybrid-compute-leader-election")
    assert role["metadata"]["namespace"] == "hybrid-compute"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["hybrid-compute-leader"], "verbs": ["get", "update"]},
        # create cannot name the object it creates
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    binding = only(documents, "RoleBinding", "hybrid-compute-leader-election")
    assert binding["roleRef"]["name"] == "hybrid-compute-leader-election"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hybrid-compute",
                                    "namespace": "hybrid-compute"}]
    two = only(render("operator.replicas=2"), "Deployment", "hybrid-compute")
    assert two["spec"]["replicas"] == 2

    without = render("operator.leaderElection=false")
    assert "--leader-election" not in container(
        only(without, "Deployment", "hybrid-compute"), "operator")["args"]
    assert not [d for d in without if d["metadata"]["name"] == "hybrid-compute-leader-election"]


def test_the_fit_webhook_is_off_by_default() -> None:
    documents = render()
    operator = container(only(documents, "Deployment", "hybrid-compute"), "operator")
    assert not [a for a in operator["args"] if a.startswith("--webhook")]
    assert "webhook" not in {p["name"] for p in operator["ports"]}
    service = only(documents, "Service", "hybrid-compute")
    assert "webhook" not in {p["name"] for p in service["spec"]["ports"]}
    granted = permissions(only(documents, "ClusterRole", "hybrid-compute"))
    assert not {p for p in granted if p[0] == "admissionregistration.k8s.io"}


def test_the_fit_webhook_is_served_through_the_operators_service() -> None:
    documents = render("operator.webhook.enabled=true", "operator.webhook.port=8443")
    operator = container(only(documents, "Deployment", "hybrid-compute"), "operator")
    # The host names the Service: the operator announces it as a Service reference,
    # with a certificate for that name.
    assert {"--webhook-port=8443", "--webhook-host=hybrid-compute.hybrid-compute.svc"} <= set(
        operator["args"])
    assert {"name": "webhook", "containerPort": 8443} in operator["ports"]
    service = only(documents, "Service", "hybrid-compute")
    assert {"name": "webhook", "port": 8443, "targetPort": "webhook"} in service["spec"]["ports"]
    role = only(documents, "ClusterRole", "hybrid-compute")
    webhook_rules = [r for r in role["rules"]
                     if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    kinds = ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]
    # kopf creates both configurations when missing, then patches them by name.
    assert webhook_rules == [
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": kinds,
         "verbs": ["create"]},
        {"apiGroups": ["admissionregistration.k8s.io"], "resources": kinds,
         "resourceNames": ["hybrid-compute.hybridcompute.io"], "verbs": ["patch"]},
    ]
    assert permissions(role) - CLUSTER_PERMISSIONS == {
        ("admissionregistration.k8s.io", kind, verb) for kind in kinds
        for verb in ("create", "patch")}


def test_the_fit_webhook_refuses_several_replicas() -> None:
    with pytest.raises(RenderError) as refused:
        render("operator.webhook.enabled=true", "operator.replicas=2")
    assert "certificate" in str(refused.value), str(refused.value)


@pytest.mark.parametrize(("enabled", "keep"), [(True, True), (True, False), (False, True)])
def test_crds_follow_crds_enabled_and_keep(enabled: bool, keep: bool) -> None:
    documents = render(f"crds.enabled={str(enabled).lower()}", f"crds.keep={str(keep).lower()}")
    crds = {d["metadata"]["name"]: d for d in documents
            if d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] in OUR_CRDS}
    assert set(crds) == (OUR_CRDS if enabled else set())
    for name, crd in crds.items():
        annotations = crd["metadata"].get("annotations") or {}
        assert (annotations.get("helm.sh/resource-policy") == "keep") is keep, name


def test_litellm_follows_the_operator_contract() -> None:
    documents = render()
    deployment = only(documents, "Deployment", "litellm")
    litellm = container(deployment, "litellm")
    assert litellm["image"] == "ghcr.io/berriai/litellm:v1.108.7"
    assert litellm["args"] == ["--config", "/etc/litellm/config.yaml", "--port", "4000"]
    env = env_of(litellm)
    assert env == {
        "HYBRID_COMPUTE_URL": "http://hybrid-compute.hybrid-compute.svc:8081",
        "HYBRID_COMPUTE_TOKEN": {"secretKeyRef": {"name": "hybrid-compute-api-token",
                                                  "key": "token"}},
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    assert litellm["readinessProbe"]["httpGet"] == {"path": "/health/liveliness",
                                                    "port": "http"}
    mount = next(m for m in litellm["volumeMounts"] if m["mountPath"] == "/etc/litellm")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert volume["configMap"] == {"name": "litellm-config"}
    # The operator owns the configuration hash and the HC_* Secret references.
    template_metadata = deployment["spec"]["template"]["metadata"]
    assert "hybridcompute.io/config-hash" not in (template_metadata.get("annotations") or {})
    assert not [name for name in env if name.startswith("HC_")]
    service = only(documents, "Service", "litellm")
    assert service["spec"]["ports"][0]["port"] == 4000


AUTH_MODULE_VALUES = ("litellm.extraVolumes[0].name=auth",
                      "litellm.extraVolumes[0].configMap.name=lab-auth",
                      "litellm.extraVolumeMounts[0].name=auth",
                      "litellm.extraVolumeMounts[0].mountPath=/etc/litellm-auth",
                      "litellm.extraEnv[0].name=PYTHONPATH",
                      "litellm.extraEnv[0].value=/etc/litellm-auth")


def test_litellm_mounts_an_auth_module_beside_the_operators_config() -> None:
    """How a RoutePolicy's spec.litellm.customAuth module reaches LiteLLM."""
    deployment = only(render(*AUTH_MODULE_VALUES), "Deployment", "litellm")
    litellm = container(deployment, "litellm")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["auth"]["configMap"] == {"name": "lab-auth"}
    assert volumes["config"]["configMap"] == {"name": "litellm-config"}
    mounts = {m["name"]: m["mountPath"] for m in litellm["volumeMounts"]}
    assert mounts == {"config": "/etc/litellm", "auth": "/etc/litellm-auth"}
    assert env_of(litellm)["PYTHONPATH"] == "/etc/litellm-auth"


@pytest.mark.parametrize("mount_path", ["/etc/litellm", "/etc/litellm/auth"])
def test_no_extra_mount_may_cover_the_operators_config(mount_path: str) -> None:
    with pytest.raises(RenderError) as refused:
        render("litellm.extraVolumeMounts[0].name=auth",
               f"litellm.extraVolumeMounts[0].mountPath={mount_path}")
    assert "schema" in str(refused.value).lower(), str(refused.value)


def test_the_operator_service_is_where_litellm_looks_for_the_api() -> None:
    documents = render()
    service = only(documents, "Service", "hybrid-compute")
    operator_pods = only(documents, "Deployment", "hybrid-compute")["spec"]["template"]
    assert service["spec"]["selector"].items() <= operator_pods["metadata"]["labels"].items()
    assert {"name": "api", "port": 8081, "targetPort": "api"} in service["spec"]["ports"]
    litellm_only = only(render("litellm.deploymentName=proxy"), "Service", "proxy")
    assert litellm_only["spec"]["selector"]["app.kubernetes.io/component"] == "litellm"


@pytest.mark.parametrize("toggles", [(), ("samples.enabled=true", "postgres.enabled=true",
                                          "monitoring.serviceMonitor.enabled=true",
                                          "timeSlicing.enabled=true")])
def test_no_render_writes_the_litellm_configmap(toggles: tuple[str, ...]) -> None:
    configmaps = [d["metadata"]["name"] for d in render(*toggles) if d["kind"] == "ConfigMap"]
    assert "litellm-config" not in configmaps


def test_the_gpu_agent_runs_on_gpu_nodes_without_taking_a_share() -> None:
    daemonset = only(render(), "DaemonSet", "hybrid-compute-gpu-agent")
    pod = daemonset["spec"]["template"]["spec"]
    agent = container(daemonset, "agent")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "runtimeClassName" not in pod
    assert agent["args"][:2] == ["agent", "--port=9400"]
    assert agent["ports"][0]["hostPort"] == 9400
    assert pod["hostPID"] is True, "the agent maps GPU processes to pods through /proc"
    operator = container(only(render(), "Deployment", "hybrid-compute"), "operator")
    assert "--gpu-agent=http://{node}:9400" in operator["args"]
    assert env_of(agent)["NVIDIA_VISIBLE_DEVICES"] == "all"
    resources = agent.get("resources", {})
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in resources.get(section, {}), section
    assert pod["automountServiceAccountToken"] is False
    k3s = only(render("agent.runtimeClassName=nvidia"), "DaemonSet", "hybrid-compute-gpu-agent")
    assert k3s["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


def test_the_gpu_agent_reads_the_model_folder_read_only_for_vram_estimates() -> None:
    daemonset = only(render("agent.modelsHostPath=/srv/models"), "DaemonSet",
                     "hybrid-compute-gpu-agent")
    agent = container(daemonset, "agent")
    assert agent["args"][2:] == ["--model-root=/models", "--model-host-path=/srv/models"]
    assert agent["volumeMounts"] == [{"name": "models", "mountPath": "/models",
                                      "readOnly": True}]
    volumes = daemonset["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["hostPath"]["path"] == "/srv/models"
    without = only(render("agent.modelsHostPath="), "DaemonSet", "hybrid-compute-gpu-agent")
    assert "volumes" not in without["spec"]["template"]["spec"]
    assert container(without, "agent")["args"] == ["agent", "--port=9400"]


def test_the_gpu_agent_warms_model_files_only_with_a_budget_and_locks_as_asked() -> None:
    def agent_of(*values: str) -> dict[str, Any]:
        return container(only(render(*values), "DaemonSet", "hybrid-compute-gpu-agent"),
                         "agent")

    default = agent_of()
    assert not any(arg.startswith("--page-cache") for arg in default["args"])
    assert "add" not in default["securityContext"]["capabilities"]
    warming = agent_of("agent.pageCache.budget=32Gi")
    assert warming["args"][-1] == "--page-cache-budget=32Gi"
    assert warming["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    locking = agent_of("agent.pageCache.budget=32Gi", "agent.pageCache.lock=true")
    assert locking["args"][-2:] == ["--page-cache-budget=32Gi", "--lock"]
    assert locking["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert locking["securityContext"]["runAsUser"] == 0, \
        "an added capability only takes effect for user 0"
    operator = container(only(render("agent.pageCache.budget=32Gi", "agent.pageCache.lock=true"),
                              "Deployment", "hybrid-compute"), "operator")
    assert "add" not in operator["securityContext"]["capabilities"]
    no_folder = agent_of("agent.pageCache.budget=32Gi", "agent.modelsHostPath=")
    assert no_folder["args"] == ["agent", "--port=9400"], "warming needs the model folder"
    with pytest.raises(RenderError, match="budget"):
        render("agent.pageCache.budget=lots")


def test_samples_are_the_seed_table_and_valid_objects() -> None:
    documents = render("samples.enabled=true")
    slots = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ModelSlot"}
    assert set(slots) == {"fast", "quality", "quality-alt", "embed"}
    specs = {name: ModelSlotSpec.model_validate(slot["spec"]) for name, slot in slots.items()}
    assert {name: spec.model.vram for name, spec in specs.items() if spec.model.vram} == {
        "fast": "7Gi", "quality": "20Gi", "quality-alt": "20Gi"}
    assert [name for name, spec in specs.items() if spec.default] == ["fast"]
    policy_object = only(documents, "RoutePolicy", "default")
    policy = RoutePolicySpec.model_validate(policy_object["spec"])
    assert {m.api_key_secret_ref.name for m in policy.cloud_models
            if m.api_key_secret_ref} == {"cloud-api-keys"}
    assert policy.litellm.config_map_name == "litellm-config"
    assert policy.litellm.deployment_name == "litellm"
    assert policy.litellm.database_url_secret_ref is None
    for document in [*slots.values(), policy_object]:
        assert document["metadata"]["annotations"][
            "argocd.argoproj.io/sync-options"] == "SkipDryRunOnMissingResource=true"


def test_postgres_is_a_toggle_wired_into_the_route_policy() -> None:
    assert not [d for d in render() if d["kind"] == "StatefulSet"]
    documents = render("postgres.enabled=true", "samples.enabled=true")
    statefulset = only(documents, "StatefulSet", "hybrid-compute-postgres")
    postgres = container(statefulset, "postgres")
    assert env_of(postgres)["POSTGRES_PASSWORD"] == {
        "secretKeyRef": {"name": "litellm-postgres", "key": "password"}}
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    only(documents, "Service", "hybrid-compute-postgres")
    policy = RoutePolicySpec.model_validate(only(documents, "RoutePolicy", "default")["spec"])
    assert policy.litellm.database_url_secret_ref is not None
    assert policy.litellm.database_url_secret_ref.key == "LITELLM_DB_URL"


def test_service_monitors_are_optional() -> None:
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]
    rendered = render("monitoring.serviceMonitor.enabled=true")
    monitors = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"hybrid-compute", "hybrid-compute-gpu-agent", "litellm"}
    assert monitors["hybrid-compute"]["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitors["hybrid-compute-gpu-agent"]["spec"]["endpoints"][0]["honorLabels"] is True
    litellm = monitors["litellm"]["spec"]["endpoints"][0]
    # LiteLLM guards /metrics with its master key: sent from the Secret, never inlined.
    assert litellm["authorization"]["credentials"] == {"name": "litellm-secrets",
                                                       "key": "LITELLM_MASTER_KEY"}
    slots = only(rendered, "PodMonitor", "hybrid-compute-slots")
    assert slots["spec"]["selector"]["matchExpressions"] == [
        {"key": "hybridcompute.io/slot", "operator": "Exists"}]
    assert slots["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def test_time_slicing_config_is_the_device_plugins_format() -> None:
    configmap = only(render("timeSlicing.enabled=true", "timeSlicing.replicas=6"), "ConfigMap",
                     "hybrid-compute-time-slicing")
    assert configmap["metadata"]["namespace"] == "nvidia-device-plugin"
    config = yaml.safe_load(configmap["data"]["any"])
    sharing = config["sharing"]["timeSlicing"]
    assert sharing["failRequestsGreaterThanOne"] is True
    assert sharing["resources"] == [{"name": "nvidia.com/gpu", "replicas": 6}]


@pytest.mark.parametrize("bad", ["operator.replica=2", "litellm.port=0",
                                 "operator.headroom=lots", "image.digest=latest",
                                 "operator.webhook.port=0", "operator.webhook.enable=true",
                                 "operator.leaderElection=maybe",
                                 "operator.slotImages.gpu=", "operator.slotImages.rocm=x",
                                 "litellm.extraVolumeMounts[0].name=no-mount-path"])
def test_the_values_schema_refuses_mistakes(bad: str) -> None:
    with pytest.raises(RenderError) as refused:
        render(bad)
    assert "schema" in str(refused.value).lower(), str(refused.value)


def _commented_keys(node: yaml.Node, schema: dict[str, Any], lines: list[str],
                    path: str) -> list[str]:
    """Keys (as dotted paths) of the values file without a comment line above them."""
    missing: list[str] = []
    if not isinstance(node, yaml.MappingNode):
        return missing
    for key_node, value_node in node.value:
        key = key_node.value
        line = key_node.start_mark.line
        above = lines[line - 1].strip() if line > 0 else ""
        if not above.startswith("#"):
            missing.append(f"{path}{key}")
        child = schema.get("properties", {}).get(key, {})
        if "properties" in child:
            missing += _commented_keys(value_node, child, lines, f"{path}{key}.")
    return missing


def test_every_values_key_is_commented() -> None:
    text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = _commented_keys(yaml.compose(text), schema, text.splitlines(), "")
    assert missing == [], f"values.yaml keys without a comment: {missing}"


def test_gpu_runtime_class_reaches_the_operator_only_when_set() -> None:
    default = container(only(render(), "Deployment", "hybrid-compute"), "operator")
    assert not [a for a in default["args"] if a.startswith("--gpu-runtime-class")]
    k3s = container(only(render("operator.gpuRuntimeClass=nvidia"), "Deployment",
                         "hybrid-compute"), "operator")
    assert "--gpu-runtime-class=nvidia" in k3s["args"]


def test_slot_images_reach_the_operator_and_can_be_replaced() -> None:
    default = container(only(render(), "Deployment", "hybrid-compute"), "operator")
    parsed = build_parser().parse_args(default["args"])
    assert (parsed.gpu_image, parsed.cpu_image) == (LLAMA_CPP.gpu_image, LLAMA_CPP.cpu_image)
    own = container(only(render("operator.slotImages.gpu=registry.example/llama:cuda",
                                "operator.slotImages.cpu=registry.example/llama:cpu",
                                "operator.gpuRuntimeClass=nvidia",
                                "operator.webhook.enabled=true", "peering.enabled=false"),
                         "Deployment", "hybrid-compute"), "operator")
    parsed = build_parser().parse_args(own["args"])
    assert (parsed.gpu_image, parsed.cpu_image) == ("registry.example/llama:cuda",
                                                    "registry.example/llama:cpu")
