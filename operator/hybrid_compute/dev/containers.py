"""How the process node turns a pod's container into a local process: which
program plays which image, where the pod's volumes live on this machine, and the
command line and environment the program gets.

Everything here is pure: the agent fetches the Secrets and ConfigMaps a
container refers to and hands them in.

- ``ghcr.io/ggml-org/llama.cpp:server*`` images run the locally built
  llama-server; ``--host`` becomes the pod's own loopback address, ``--threads``
  is capped for a machine whose few cores every slot shares, and an embedding
  server gets mean pooling, which the GGUF models of the local cluster do not
  declare themselves.
- images whose name contains ``litellm`` run the cached ``litellm`` proxy, bound
  to the pod's address.
- any other image is simulated (no program runs; the pod's status says so).

Volumes: ConfigMap and Secret volumes become folders of their keys, hostPath and
PersistentVolumeClaim volumes are the node's models folder (the only host data
the local cluster's pods read), except a ``DirectoryOrCreate`` hostPath, which
is a folder of the node's own that outlives the pod (as a kubelet creates one on
its host: a prompt cache folder), and everything else an empty folder of the pod.
Arguments and environment values that name a path under a mount point (each
entry of a colon-separated list such as ``PYTHONPATH``) are rewritten to the
local folder.
"""

from __future__ import annotations

import base64
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hybrid_compute.upstream import LLAMA_CPP

LLAMA_SERVER_IMAGE = f"{LLAMA_CPP.repository}:server"
"""The prefix of llama.cpp's server images, of any build and backend."""
LITELLM_IMAGE_MARK = "litellm"
# Kept from the agent's own environment, as an image would carry them.
INHERITED_ENV = ("PATH", "HOME", "LANG", "TMPDIR")

ObjectKey = tuple[str, str]
"""(kind, name) of a Secret or ConfigMap in the pod's namespace."""


class Program(Enum):
    LLAMA_SERVER = "llama-server"
    LITELLM = "litellm"
    SIMULATED = "simulated"


class ContainerConfigError(RuntimeError):
    """The container cannot start yet (a missing Secret key, say), as the kubelet's
    CreateContainerConfigError, or its volume cannot be mounted yet, where the
    kubelet leaves it in ContainerCreating; the agent retries."""

    def __init__(self, message: str, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason


def program_for(image: str) -> Program:
    if image.startswith(LLAMA_SERVER_IMAGE):
        return Program.LLAMA_SERVER
    if LITELLM_IMAGE_MARK in image:
        return Program.LITELLM
    return Program.SIMULATED


@dataclass(frozen=True)
class Volume:
    name: str
    path: Path
    files: dict[str, str]
    """What to write into ``path`` before the container starts (ConfigMap/Secret)."""


def pod_volumes(pod: dict[str, Any], pod_folder: Path, models: Path,
                objects: Mapping[ObjectKey, dict[str, str] | None], *, host_folder: Path
                ) -> dict[str, Volume]:
    """Every volume of the pod, by name, with its local folder. ``host_folder`` plays
    the node's root for hostPath folders the node creates."""
    found: dict[str, Volume] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        folder = pod_folder / "volumes" / name
        host_path = volume.get("hostPath") or {}
        if host_path.get("type") == "DirectoryOrCreate":
            found[name] = Volume(name, host_folder / host_path["path"].lstrip("/"), {})
        elif "hostPath" in volume or "persistentVolumeClaim" in volume:
            found[name] = Volume(name, models, {})
        elif "configMap" in volume or "secret" in volume:
            kind = "ConfigMap" if "configMap" in volume else "Secret"
            source = volume["configMap"] if kind == "ConfigMap" else volume["secret"]
            source_name = source.get("name") or source.get("secretName", "")
            data = objects.get((kind, source_name))
            if data is None:
                if source.get("optional"):
                    data = {}
                else:
                    raise ContainerConfigError(f"{kind.lower()} {source_name!r} not found",
                                               "ContainerCreating")
            items = source.get("items")
            files = ({item["path"]: data[item["key"]] for item in items if item["key"] in data}
                     if items else dict(data))
            found[name] = Volume(name, folder, files)
        else:
            found[name] = Volume(name, folder, {})
    return found


def referenced_objects(pod: dict[str, Any]) -> set[ObjectKey]:
    """The Secrets and ConfigMaps the pod's volumes and env name."""
    wanted: set[ObjectKey] = set()
    for volume in pod["spec"].get("volumes") or []:
        if "configMap" in volume:
            wanted.add(("ConfigMap", volume["configMap"].get("name", "")))
        if "secret" in volume:
            wanted.add(("Secret", volume["secret"].get("secretName", "")))
    for container in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]:
        for entry in container.get("env") or []:
            source = entry.get("valueFrom") or {}
            if "secretKeyRef" in source:
                wanted.add(("Secret", source["secretKeyRef"]["name"]))
            if "configMapKeyRef" in source:
                wanted.add(("ConfigMap", source["configMapKeyRef"]["name"]))
        for entry in container.get("envFrom") or []:
            if "secretRef" in entry:
                wanted.add(("Secret", entry["secretRef"]["name"]))
            if "configMapRef" in entry:
                wanted.add(("ConfigMap", entry["configMapRef"]["name"]))
    return wanted


def object_data(kind: str, body: dict[str, Any]) -> dict[str, str]:
    """A Secret's or ConfigMap's keys as text (Secret values decoded)."""
    if kind == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
    return dict(body.get("data") or {})


def mount_paths(container: dict[str, Any], volumes: Mapping[str, Volume]) -> dict[str, Path]:
    """The container's mount points and the local folder each one is."""
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is not None:
            local = volume.path / mount["subPath"] if mount.get("subPath") else volume.path
            mounts[mount["mountPath"].rstrip("/") or "/"] = local
    return mounts


def local_path(value: str, mounts: Mapping[str, Path]) -> str:
    """``value`` with a leading mount point replaced by its local folder."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path:
            return str(mounts[mount_path])
        if value.startswith(mount_path + "/"):
            return str(mounts[mount_path] / posixpath.relpath(value, mount_path))
    return value


def local_path_list(value: str, mounts: Mapping[str, Path]) -> str:
    """:func:`local_path` of each entry of a colon-separated list."""
    return ":".join(local_path(entry, mounts) for entry in value.split(":"))


def rewrite_paths(args: list[str], mounts: Mapping[str, Path]) -> list[str]:
    rewritten = []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            rewritten.append(f"{flag}={local_path(value, mounts)}")
        else:
            rewritten.append(local_path(arg, mounts))
    return rewritten


def _set_flag(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced, or the flag appended."""
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return [*args[:index + 1], value, *args[index + 2:]]
        if arg.startswith(flag + "="):
            return [*args[:index], f"{flag}={value}", *args[index + 1:]]
    return [*args, flag, value]


def _flag_value(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    return None


def thread_cap() -> int:
    """Threads one llama-server may use: half the machine, as several slots and
    LiteLLM share its cores (a GPU pod asks for 8 threads to feed the card)."""
    return max(1, (os.cpu_count() or 2) // 2)


def llama_server_command(binary: Path, container: dict[str, Any], pod_ip: str,
                         mounts: Mapping[str, Path], threads: int) -> list[str]:
    args = rewrite_paths([*(container.get("command") or [])[1:],
                          *(container.get("args") or [])], mounts)
    args = _set_flag(args, "--host", pod_ip)
    asked = _flag_value(args, "--threads")
    if asked is None or not asked.lstrip("-").isdigit() or int(asked) > threads:
        args = _set_flag(args, "--threads", str(threads))
    # The GPU flags of a slot (--n-gpu-layers, --flash-attn on, --split-mode) are
    # accepted by the CPU build, which runs everything on the CPU: none is dropped.
    if ("--embedding" in args or "--embeddings" in args) and _flag_value(
            args, "--pooling") is None:
        args += ["--pooling", "mean"]
    return [str(binary), *args]


def litellm_command(binary: Path, container: dict[str, Any], pod_ip: str,
                    mounts: Mapping[str, Path]) -> list[str]:
    args = rewrite_paths(list(container.get("args") or []), mounts)
    return [str(binary), *_set_flag(args, "--host", pod_ip)]


def _field_value(path: str, pod: dict[str, Any], pod_ip: str) -> str:
    values: dict[str, str] = {"metadata.name": pod["metadata"]["name"],
              "metadata.namespace": pod["metadata"]["namespace"],
              "metadata.uid": pod["metadata"].get("uid", ""),
              "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.podIP": pod_ip, "status.hostIP": "127.0.0.1"}
    return values.get(path, "")


def environment(container: dict[str, Any], pod: dict[str, Any], pod_ip: str,
                objects: Mapping[ObjectKey, dict[str, str] | None],
                inherited: Mapping[str, str],
                mounts: Mapping[str, Path] | None = None) -> dict[str, str]:
    """The container's environment, references resolved as the kubelet does, and
    its values that name paths under ``mounts`` pointed at their local folders."""
    env = {key: inherited[key] for key in INHERITED_ENV if key in inherited}
    mounts = mounts or {}

    def lookup(kind: str, ref: dict[str, Any]) -> str | None:
        data = objects.get((kind, ref["name"]))
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise ContainerConfigError(
                f"{kind.lower()} {ref['name']!r} has no key {ref['key']!r}" if data is not None
                else f"{kind.lower()} {ref['name']!r} not found")
        return str(data[ref["key"]])

    for entry in container.get("envFrom") or []:
        kind, ref = (("Secret", entry["secretRef"]) if "secretRef" in entry
                     else ("ConfigMap", entry["configMapRef"]))
        data = objects.get((kind, ref["name"]))
        if data is None and not ref.get("optional"):
            raise ContainerConfigError(f"{kind.lower()} {ref['name']!r} not found")
        env.update({entry.get("prefix", "") + k: local_path_list(v, mounts)
                    for k, v in (data or {}).items()})
    for entry in container.get("env") or []:
        source = entry.get("valueFrom")
        value: str | None
        if source is None:
            value = str(entry.get("value", ""))
        elif "secretKeyRef" in source:
            value = lookup("Secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = lookup("ConfigMap", source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = _field_value(source["fieldRef"]["fieldPath"], pod, pod_ip)
        else:
            value = None
        if value is not None:
            env[entry["name"]] = local_path_list(value, mounts)
    return env


def container_port(container: dict[str, Any], port: int | str) -> int | None:
    """A probe's or Service's target port (a number or a port name) as a number."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    return None
