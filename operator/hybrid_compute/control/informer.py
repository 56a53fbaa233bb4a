"""Keeps the cluster's objects in memory from watch events, so a pass reads memory
instead of listing the API server.

One :class:`Informer` per list the plan reads: it lists once, then watches from the
list's resourceVersion, and lists again when the watch falls too far behind (410
Gone). Each object is parsed into its View record (:mod:`hybrid_compute.plan.objects`)
when an event brings it, not on every pass, and a pass that no event preceded gets the
very same records and tuples as the last one.

The loop is woken only by a change the plan can see: an event whose record equals
the one held (a heartbeat, a field the plan does not read) wakes nothing, and neither
does the echo of one of the operator's own writes (:meth:`ClusterCache.expect`). The
next pass waits until the caches hold what the last one wrote
(:meth:`ClusterCache.caught_up`), so a plan never re-decides from the state before
its own writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel

from hybrid_compute.api.common import GROUP, VERSION
from hybrid_compute.api.labels import MANAGED_BY, MANAGED_BY_LABEL, SLOT_LABEL, WORKLOAD_LABEL
from hybrid_compute.plan.objects import (
    deployment_from_object,
    node_from_object,
    pod_from_object,
    policy_from_object,
    slot_from_object,
    workload_child_from_object,
    workload_from_object,
)
from hybrid_compute.plan.view import (
    DeploymentInfo,
    GpuNode,
    PodInfo,
    PolicyInfo,
    SlotInfo,
    WorkloadChild,
    WorkloadInfo,
)

logger = logging.getLogger("hybrid_compute.control.informer")

T = TypeVar("T")
Key = tuple[str, str]
"""(namespace, name); "" as the namespace of a cluster-scoped object."""

WATCH_SECONDS = 300
"""How long one watch request runs before the API server ends it and a new one starts."""
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
GONE_KEPT_SECONDS = 60.0
"""How long a deleted object is remembered (:meth:`Informer.recently_deleted`)."""
CUSTOM_RESOURCES = ("modelslots", "gpuworkloads", "routepolicies")
CAUGHT_UP_SECONDS = 10.0
LIST_PAGE = 100
"""Objects per page of a list."""
"""The longest a pass waits for the echo of the last pass's writes: milliseconds as a
rule, seconds after a pass that wrote thousands of objects."""


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclass(frozen=True)
class Source(Generic[T]):
    """One list the plan reads: how to list and watch it, and how to parse an object."""

    name: str
    resource: str
    """The API resource (``deployments``, ``modelslots``, ...): writes to it are
    expected back on this source."""
    list_call: Callable[..., Any]
    """A kubernetes client list function, already given its selector."""
    parse: Callable[[Mapping[str, Any]], T | None]
    """The object's View record; None for an object the plan does not see."""
    reuse: Callable[[T, T], T] | None = None
    """Given the record held and the one an event brings, the record to hold: what
    the two share is kept as the objects held, so results the plan keeps by object
    (a pod template by its spec) hold across a status change."""


def _key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")


def _version(obj: Mapping[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("resourceVersion") or 0)


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a streamed watch response, as they arrive."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


class _FieldsSet(set[str]):
    """The names of the fields a parsed model was given (pydantic's
    ``__pydantic_fields_set__``), one object for every model of an informer given the
    same names. A set of its own costs each model a few hundred bytes, and the records
    of a thousand slots hold thousands of models. The records are never changed in
    place, nor is this set; a copy (``model_copy`` makes one) is a set of its own."""

    def add(self, name: str) -> None:
        raise TypeError(f"a record read from the API is not changed in place ({name})")

    def update(self, *names: Iterable[str]) -> None:
        raise TypeError("a record read from the API is not changed in place")

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> set[str]:
        return set(self)


class _FieldsSets:
    """One :class:`_FieldsSet` per combination of names, for the models of a record."""

    def __init__(self) -> None:
        self._sets: dict[frozenset[str], _FieldsSet] = {}

    def share(self, value: object) -> None:
        """Gives every model in ``value`` (a record, a model, or a list, tuple or dict
        holding them) the shared set of its names."""
        if isinstance(value, BaseModel):
            names = frozenset(value.__pydantic_fields_set__)
            shared = self._sets.get(names)
            if shared is None:
                shared = self._sets[names] = _FieldsSet(names)
            object.__setattr__(value, "__pydantic_fields_set__", shared)
            self.share(list(value.__dict__.values()))
        elif isinstance(value, list | tuple):
            for item in value:
                self.share(item)
        elif isinstance(value, dict):
            self.share(list(value.values()))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            self.share([getattr(value, field.name) for field in dataclasses.fields(value)])


class Informer(Generic[T]):
    """The records of one :class:`Source`, kept current by a watch in a thread."""

    def __init__(self, source: Source[T], changed: Callable[[], None]) -> None:
        self.source = source
        self._changed = changed
        self._fields_sets = _FieldsSets()
        self._lock = threading.Lock()
        self._records: dict[Key, T] = {}
        self._versions: dict[Key, int] = {}
        self._gone: dict[Key, tuple[float, T]] = {}
        self._own: set[tuple[Key, int]] = set()
        self._snapshot: tuple[T, ...] | None = None
        self._resource_version = ""
        self.synced = threading.Event()
        """Set once the first list is held."""

    def size(self) -> int:
        return len(self._records)

    def records(self) -> tuple[T, ...]:
        """Every record, in the API server's list order (namespace, then name); the
        same tuple as last time until an event or a list brings a record."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = tuple(self._records[key] for key in sorted(self._records))
            return self._snapshot

    def recently_deleted(self) -> list[T]:
        """The records of the objects deleted in the last GONE_KEPT_SECONDS."""
        horizon = time.monotonic() - GONE_KEPT_SECONDS
        with self._lock:
            for key in [key for key, (at, _) in self._gone.items() if at < horizon]:
                del self._gone[key]
            return [record for _, record in self._gone.values()]

    def expect(self, key: Key, version: int) -> None:
        """The operator wrote this object, which is now at ``version``: its echo is not
        a change to wake the loop for."""
        with self._lock:
            if self._versions.get(key, 0) < version:
                self._own.add((key, version))

    def holds(self, key: Key, version: int) -> bool:
        """Whether the object is held at ``version`` or later (or was deleted since)."""
        with self._lock:
            return self._versions.get(key, 0) >= version or key in self._gone

    def forget(self, key: Key, version: int) -> None:
        """A write another informer of the same resource held: no echo comes here."""
        with self._lock:
            self._own.discard((key, version))

    def run(self, stop: threading.Event) -> None:
        """Lists and watches until ``stop`` is set; API errors are retried with backoff."""
        failures = 0
        while not stop.is_set():
            try:
                if not self._resource_version:
                    self._relist()
                self._watch()
                failures = 0
            except _Expired:
                self._resource_version = ""
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as error:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                status = getattr(error, "status", None)
                hint = (f"; is the {self.source.resource} CRD installed? (kubectl apply -f "
                        "crds/, and the operator picks it up)"
                        if status == 404 and self.source.resource in CUSTOM_RESOURCES else "")
                logger.warning("watching %s failed (%s)%s; again in %.0fs", self.source.name,
                               status or error, hint, delay)
                stop.wait(delay)

    def _parse(self, obj: Mapping[str, Any]) -> T | None:
        record = self.source.parse(obj)
        if record is not None:
            self._fields_sets.share(record)
        return record

    def _relist(self) -> None:
        records: dict[Key, T] = {}
        versions: dict[Key, int] = {}
        page = ""
        while True:
            # In pages: a whole list of a thousand objects, parsed at once, would leave
            # the process that much larger for good.
            listed = json.loads(self.source.list_call(
                limit=LIST_PAGE, _continue=page or None, _preload_content=False,
                _request_timeout=60).data)
            for obj in listed.get("items") or []:
                record = self._parse(obj)
                if record is not None:
                    records[_key(obj)] = record
                    versions[_key(obj)] = _version(obj)
            page = listed["metadata"].get("continue") or ""
            if not page:
                break
        with self._lock:
            changed = records != self._records
            now = time.monotonic()
            for key in self._records.keys() - records.keys():
                self._gone[key] = (now, self._records[key])
            self._records, self._versions = records, versions
            self._snapshot = None  # equal records may still carry newer versions
            self._own.clear()
            self._resource_version = listed["metadata"]["resourceVersion"]
        self.synced.set()
        if changed:
            self._changed()

    def _watch(self) -> None:
        response = self.source.list_call(
            watch=True, resource_version=self._resource_version, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _preload_content=False,
            _request_timeout=(10, WATCH_SECONDS + 30))
        try:
            for line in _lines(response):
                self._receive(json.loads(line))
        finally:
            response.release_conn()

    def _receive(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired
            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
        version = (obj.get("metadata") or {}).get("resourceVersion", "")
        if kind == "BOOKMARK":
            self._resource_version = version
            return
        key = _key(obj)
        record = None if kind == "DELETED" else self._parse(obj)
        with self._lock:
            own = (key, int(version or 0)) in self._own
            self._own.discard((key, int(version or 0)))
            previous = self._records.get(key)
            if record is not None and previous is not None and self.source.reuse is not None:
                record = self.source.reuse(previous, record)
            if record is None:
                self._records.pop(key, None)
                self._versions.pop(key, None)
                if previous is not None:
                    self._gone[key] = (time.monotonic(), previous)
            else:
                # Kept even when equal: a record may carry fields that do not count as
                # a change (a Deployment's resourceVersion, its write precondition).
                self._records[key] = record
                self._versions[key] = int(version or 0)
                self._gone.pop(key, None)
            changed = record != previous
            if record is not None or previous is not None:
                self._snapshot = None
            self._resource_version = version
        if changed and not own:
            self._changed()


Specified = TypeVar("Specified", SlotInfo, WorkloadInfo, PolicyInfo)


def _same_spec(held: Specified, record: Specified) -> Specified:
    """The held record when nothing changed; else ``record``, holding the held spec
    object when the spec of the same object is equal (most events of a custom object
    are its status). A spec object so stands for one object's spec, name and
    creation: the plan keeps what it judged from those while the spec is the same
    object, and an object deleted and made again is another object."""
    if record == held:
        return held
    if held.spec is not None and record.uid == held.uid and record.spec == held.spec:
        return dataclasses.replace(record, spec=held.spec)
    return record


def _not_deleted(parse: Callable[[Mapping[str, Any]], T]
                 ) -> Callable[[Mapping[str, Any]], T | None]:
    """An owner being deleted is not planned for (its children go with it)."""
    def parse_live(obj: Mapping[str, Any]) -> T | None:
        return None if (obj.get("metadata") or {}).get("deletionTimestamp") else parse(obj)
    return parse_live


def _workload_child(kind: str) -> Callable[[Mapping[str, Any]], WorkloadChild | None]:
    def parse(obj: Mapping[str, Any]) -> WorkloadChild | None:
        return workload_child_from_object({**obj, "kind": kind})
    return parse


@dataclass(frozen=True)
class SlotService:
    """A slot's Service: whether it publishes not-ready addresses."""

    namespace: str
    slot: str
    publish_not_ready: bool


def _service(obj: Mapping[str, Any]) -> SlotService | None:
    metadata = obj.get("metadata") or {}
    slot = (metadata.get("labels") or {}).get(SLOT_LABEL)
    if not slot:
        return None
    return SlotService(metadata.get("namespace", ""), slot,
                       bool((obj.get("spec") or {}).get("publishNotReadyAddresses")))


@dataclass(frozen=True)
class Written:
    """One object the operator wrote, at the version the API server answered."""

    resource: str
    namespace: str
    name: str
    version: int


class ClusterCache:
    """Every list the plan reads, each kept by its :class:`Informer`."""

    def __init__(self, api: client.ApiClient, changed: Callable[[], None]) -> None:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        batch, custom = client.BatchV1Api(api), client.CustomObjectsApi(api)
        owned = f"{MANAGED_BY_LABEL}={MANAGED_BY},{WORKLOAD_LABEL}"
        slot_children = f"{MANAGED_BY_LABEL}={MANAGED_BY},{SLOT_LABEL}"

        def custom_objects(plural: str) -> Callable[..., Any]:
            return functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, plural)

        def informer(source: Source[T]) -> Informer[T]:
            return Informer(source, changed)

        self.nodes: Informer[GpuNode] = informer(Source(
            "nodes", "nodes", core.list_node, node_from_object))
        self.slot_pods: Informer[PodInfo] = informer(Source(
            "slot pods", "pods", functools.partial(core.list_pod_for_all_namespaces,
                                                   label_selector=SLOT_LABEL),
            pod_from_object))
        self.workload_pods: Informer[PodInfo] = informer(Source(
            "workload pods", "pods", functools.partial(core.list_pod_for_all_namespaces,
                                                       label_selector=WORKLOAD_LABEL),
            pod_from_object))
        self.jobs: Informer[WorkloadChild] = informer(Source(
            "jobs", "jobs", functools.partial(batch.list_job_for_all_namespaces,
                                              label_selector=owned), _workload_child("Job")))
        self.workload_deployments: Informer[WorkloadChild] = informer(Source(
            "workload deployments", "deployments",
            functools.partial(apps.list_deployment_for_all_namespaces, label_selector=owned),
            _workload_child("Deployment")))
        self.slot_deployments: Informer[DeploymentInfo] = informer(Source(
            "slot deployments", "deployments",
            functools.partial(apps.list_deployment_for_all_namespaces,
                              label_selector=slot_children), deployment_from_object))
        self.services: Informer[SlotService] = informer(Source(
            "services", "services",
            functools.partial(core.list_service_for_all_namespaces,
                              label_selector=slot_children), _service))
        self.slots: Informer[SlotInfo] = informer(Source(
            "modelslots", "modelslots", custom_objects("modelslots"),
            _not_deleted(slot_from_object), _same_spec))
        self.workloads: Informer[WorkloadInfo] = informer(Source(
            "gpuworkloads", "gpuworkloads", custom_objects("gpuworkloads"),
            _not_deleted(workload_from_object), _same_spec))
        self.policies: Informer[PolicyInfo] = informer(Source(
            "routepolicies", "routepolicies", custom_objects("routepolicies"),
            _not_deleted(policy_from_object), _same_spec))
        self._pending: list[Written] = []
        self._stop = threading.Event()

    def size(self) -> int:
        """How many records the caches hold."""
        return sum(informer.size() for informer in self.informers())

    def informers(self) -> list[Informer[Any]]:
        return [self.nodes, self.slot_pods, self.workload_pods, self.jobs,
                self.workload_deployments, self.slot_deployments, self.services,
                self.slots, self.workloads, self.policies]

    def start(self) -> None:
        for informer in self.informers():
            threading.Thread(target=informer.run, args=(self._stop,), daemon=True,
                             name=f"hybrid-compute-watch-{informer.source.name}").start()

    def stop(self) -> None:
        """Ends the watches when their current request ends."""
        self._stop.set()

    async def synced(self) -> None:
        """Returns once every list has been read once."""
        while not all(informer.synced.is_set() for informer in self.informers()):
            await asyncio.sleep(0.05)

    def expect(self, written: list[Written]) -> None:
        """The last pass's writes: their echoes wake nothing, and the next pass waits
        for them. Writes to resources no informer watches (ConfigMaps) are not waited
        for."""
        self._pending = [write for write in written if self._watching(write.resource)]
        for write in self._pending:
            for informer in self._watching(write.resource):
                informer.expect((write.namespace, write.name), write.version)

    async def caught_up(self, timeout: float = CAUGHT_UP_SECONDS) -> bool:
        """Waits until the informers hold every write of the last pass; False when
        ``timeout`` passed first (the pass then plans from what they hold)."""
        deadline = time.monotonic() + timeout
        while True:
            self._pending = [write for write in self._pending if not self._held(write)]
            if not self._pending or time.monotonic() >= deadline:
                return not self._pending
            await asyncio.sleep(0.01)

    def _held(self, write: Written) -> bool:
        key = (write.namespace, write.name)
        watching = self._watching(write.resource)
        if not any(informer.holds(key, write.version) for informer in watching):
            return False
        for informer in watching:
            informer.forget(key, write.version)
        return True

    def _watching(self, resource: str) -> list[Informer[Any]]:
        return [informer for informer in self.informers()
                if informer.source.resource == resource]
