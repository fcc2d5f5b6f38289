"""The ``kubernetes`` provider: one agent pod per node, in a namespace of a cluster.

A node of class ``small`` is a pod named after its node id whose one container
runs the agent image with resource requests equal to its limits equal to the
class, so the cluster's scheduler finds it a machine with that much room and the
agent offers exactly that (``STRATA_AGENT_CPU_MILLIS``... from the class, the node
id from the pod's own name). The pod never restarts (``restartPolicy: Never``): an
agent that ends is a node that is gone, and the fleet replaces it.

What the cluster says is translated, not interpreted: a pod the scheduler cannot
place is STARTING with the scheduler's own message ("0/3 nodes are available:
3 Insufficient memory..."), which the fleet shows on the attempts waiting for it;
Running is RUNNING; Succeeded, Failed (evicted), being deleted, or gone from the
API is GONE. A pod the API server refuses (a LimitRange, a quota, a policy) does
not crash anything: the refusal is logged once and is the node's STARTING message,
and the pod is asked for again at every :meth:`observe` until the API accepts it.

The official client is synchronous; every call runs in a worker thread. Calls
time out after ``REQUEST_TIMEOUT`` and are not retried by the client: the fleet
loop is the retry, and :meth:`check` must answer promptly for health.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import structlog
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from strata.core.errors import ConfigError
from strata.provisioner.domain.resources import Resources
from strata.provisioner.providers import NodeClassSpec, NodePhase, ObservedNode
from strata.provisioner.settings import ProvisionerSettings

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")

REQUEST_TIMEOUT = 10.0
"""Seconds one API call may take."""
NODES_REFRESH = 60.0
"""Most seconds between two reads of the cluster's nodes (for :meth:`largest`): a check
runs every fleet round, and listing every node of a large cluster each time is a heavy
answer for a figure that changes rarely."""
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "strata-provisioner"
NODE_CLASS_LABEL = "strata.dev/node-class"
POD_SELECTOR = f"{MANAGED_BY}={MANAGER},{NODE_CLASS_LABEL}"
"""Every agent pod this provider made, and only those."""
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "agent"
AGENT_COMMAND = ("python", "-m", "strata.agent")
RETRY_REFUSED = 30.0
"""Seconds between asks for a pod the API server refused: shown, not hammered."""


class KubernetesUnavailableError(RuntimeError):
    """The API server could not be reached or refused a call; ``str()`` is
    ``"<server>: <why>"``."""


@dataclass
class _Refused:
    """A pod the API did not create, kept to be asked for again."""

    node_class: NodeClassSpec
    message: str
    at: float
    """When it was last asked for (``time.monotonic()``)."""


class KubernetesProvider:
    """Starts and stops agent pods of node classes through the Kubernetes API."""

    name = "kubernetes"

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        image: str,
        agent_env: Mapping[str, str] | None = None,
        command: tuple[str, ...] = AGENT_COMMAND,
        config_maps: tuple[str, ...] = (),
        secrets: tuple[str, ...] = (),
        node_selector: Mapping[str, str] | None = None,
        service_account: str | None = None,
        retry_refused: float = RETRY_REFUSED,
    ) -> None:
        self._api = api
        self._core = k8s.CoreV1Api(api)
        self.server = str(api.configuration.host)
        self.namespace = namespace
        self.image = image
        self._agent_env = dict(agent_env or {})
        self._command = command
        self._config_maps = config_maps
        self._secrets = secrets
        self._retry_refused = retry_refused
        self._node_selector = dict(node_selector or {})
        self._service_account = service_account
        self._started: dict[str, str] = {}
        """node id -> class of every pod it created and was not asked to stop."""
        self._refused: dict[str, _Refused] = {}
        self._stopped: set[str] = set()
        """Pods it deleted that may still be terminating: not reported."""
        self._largest: Resources | None = None
        self._nodes_read_at: float | None = None

    @classmethod
    def from_settings(cls, settings: ProvisionerSettings) -> KubernetesProvider:
        """The provider ``STRATA_PROVISIONER_KUBERNETES_*`` describe; a setting that cannot
        work raises :class:`ConfigError` naming it. The cluster's nodes are read once now
        (best effort) so that a class larger than any node is refused at start."""
        if settings.kubernetes_server and settings.kubernetes_token_file is None:
            raise ConfigError(
                "STRATA_PROVISIONER_KUBERNETES_TOKEN_FILE: required with "
                "STRATA_PROVISIONER_KUBERNETES_SERVER (a file holding the bearer token)"
            )
        try:
            provider = cls.connect(
                kubeconfig=settings.kubernetes_kubeconfig,
                server=settings.kubernetes_server,
                token_file=settings.kubernetes_token_file,
                ca_file=settings.kubernetes_ca_file,
                namespace=settings.kubernetes_namespace,
                image=settings.kubernetes_agent_image,
                agent_env=settings.kubernetes_agent_env,
                config_maps=settings.kubernetes_agent_config_maps,
                secrets=settings.kubernetes_agent_secrets,
            )
        except (OSError, k8s_config.ConfigException) as exc:
            raise ConfigError(f"STRATA_PROVISIONER_KUBERNETES_*: {exc}") from exc
        provider.read_nodes()
        return provider

    @classmethod
    def connect(
        cls,
        *,
        kubeconfig: Path | None = None,
        server: str = "",
        token_file: Path | None = None,
        ca_file: Path | None = None,
        **kwargs: Any,
    ) -> KubernetesProvider:
        """A provider for the cluster of ``kubeconfig``; else of ``server`` with the bearer
        token in ``token_file``; else the cluster this process runs in (its service account).
        """
        configuration = k8s.Configuration()
        if kubeconfig is not None:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=configuration
            )
        elif server:
            if token_file is None:
                raise ValueError("kubernetes_token_file: required with kubernetes_server")
            configuration.host = server
            configuration.api_key = {"authorization": token_file.read_text().strip()}
            configuration.api_key_prefix = {"authorization": "Bearer"}
            if ca_file is not None:
                configuration.ssl_ca_cert = str(ca_file)
        else:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        configuration.retries = 0
        return cls(k8s.ApiClient(configuration), **kwargs)

    # The interface.
    async def start(self, node_id: str, node_class: NodeClassSpec) -> None:
        """Create the node's pod; one that exists already is left alone. A refusal is
        kept as the node's message and asked for again by :meth:`observe`."""
        self._started[node_id] = node_class.name
        self._stopped.discard(node_id)
        await self._create(node_id, node_class)

    async def stop(self, node_id: str) -> None:
        """Delete the node's pod (its agent drained already); a missing pod is fine."""
        self._started.pop(node_id, None)
        self._refused.pop(node_id, None)
        self._stopped.add(node_id)
        try:
            await self._call(
                self._core.delete_namespaced_pod,
                node_id,
                self.namespace,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise self._unavailable(exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unavailable(exc) from exc
        log.info("agent pod deleted", node_id=node_id, namespace=self.namespace)

    async def observe(self) -> list[ObservedNode]:
        """Every agent pod of this provider, with its phase; a pod it created that is no
        longer there is GONE. Raises :class:`KubernetesUnavailableError` when the API fails."""
        now = time.monotonic()
        for node_id, refused in list(self._refused.items()):
            if now - refused.at >= self._retry_refused:
                await self._create(node_id, refused.node_class)
        pods = await self._list_pods()
        observed: list[ObservedNode] = []
        seen: set[str] = set()
        for pod in pods:
            node_id = pod.metadata.name
            seen.add(node_id)
            if node_id in self._stopped:
                continue
            node_class = (pod.metadata.labels or {}).get(NODE_CLASS_LABEL, "")
            phase, message = pod_phase(pod)
            observed.append(ObservedNode(node_id, node_class, phase, message))
        self._stopped &= seen
        for node_id, node_class in self._started.items():
            if node_id in seen:
                continue
            not_created = self._refused.get(node_id)
            if not_created is not None:
                observed.append(
                    ObservedNode(node_id, node_class, NodePhase.STARTING, not_created.message)
                )
            else:
                observed.append(
                    ObservedNode(node_id, node_class, NodePhase.GONE, "its pod was deleted")
                )
        return observed

    def forget(self, node_id: str) -> None:
        """Drop a node the fleet declared lost (its pod is gone or ended)."""
        self._started.pop(node_id, None)
        self._refused.pop(node_id, None)

    async def check(self) -> str | None:
        """None when the API answers this provider's credentials in its namespace; else
        ``"<server>: <why>"`` (a refused token: ``401 Unauthorized``)."""
        try:
            await self._call(
                self._core.list_namespaced_pod,
                self.namespace,
                limit=1,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            return str(self._unavailable(exc))
        await self._refresh_largest()
        return None

    def largest(self) -> Resources | None:
        """The most CPU, memory and GPUs any one Ready node offers (allocatable), as last
        read (at start, then by :meth:`check` at most every ``NODES_REFRESH`` seconds);
        None before, or when nodes cannot be listed."""
        return self._largest

    async def close(self) -> None:
        """Close the client; the pods stay (the fleet's store still knows them)."""
        await asyncio.to_thread(self._api.close)

    # The pod.
    def pod(self, node_id: str, node_class: NodeClassSpec) -> k8s.V1Pod:
        """The agent pod of ``node_id``: requests = limits = the class."""
        amounts = pod_resources(node_class.capacity)
        env = [
            k8s.V1EnvVar(
                name="STRATA_AGENT_NODE_ID",
                value_from=k8s.V1EnvVarSource(
                    field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name")
                ),
            ),
            k8s.V1EnvVar(name="STRATA_AGENT_CPU_MILLIS", value=str(node_class.capacity.cpu_millis)),
            k8s.V1EnvVar(
                name="STRATA_AGENT_MEMORY_BYTES", value=str(node_class.capacity.memory_bytes)
            ),
            k8s.V1EnvVar(name="STRATA_AGENT_GPUS", value=str(node_class.capacity.gpus)),
            k8s.V1EnvVar(
                name="STRATA_AGENT_LABELS", value=json.dumps({NODE_CLASS_LABEL: node_class.name})
            ),
            *(k8s.V1EnvVar(name=name, value=value) for name, value in self._agent_env.items()),
        ]
        container = k8s.V1Container(
            name=CONTAINER,
            image=self.image,
            env=env,
            command=list(self._command),
            env_from=[
                *(
                    k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=name))
                    for name in self._config_maps
                ),
                *(
                    k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name))
                    for name in self._secrets
                ),
            ]
            or None,
            resources=k8s.V1ResourceRequirements(requests=amounts, limits=dict(amounts)),
        )
        return k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(
                name=node_id,
                namespace=self.namespace,
                labels={MANAGED_BY: MANAGER, NODE_CLASS_LABEL: node_class.name},
            ),
            spec=k8s.V1PodSpec(
                containers=[container],
                restart_policy="Never",
                node_selector=self._node_selector or None,
                service_account_name=self._service_account,
            ),
        )

    # Calls.
    async def _create(self, node_id: str, node_class: NodeClassSpec) -> None:
        try:
            await self._call(
                self._core.create_namespaced_pod,
                self.namespace,
                self.pod(node_id, node_class),
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 409:  # AlreadyExists: started before (a retry, a restart)
                self._refused.pop(node_id, None)
                return
            self._refuse(node_id, node_class, f"the API server refused its pod: {reason(exc)}")
            return
        except urllib3.exceptions.HTTPError as exc:
            self._refuse(
                node_id, node_class, f"its pod could not be created: {self._unavailable(exc)}"
            )
            return
        self._refused.pop(node_id, None)
        log.info(
            "agent pod created",
            node_id=node_id,
            node_class=node_class.name,
            namespace=self.namespace,
        )

    def _refuse(self, node_id: str, node_class: NodeClassSpec, message: str) -> None:
        before = self._refused.get(node_id)
        if before is None or before.message != message:
            log.warning("agent pod not created", node_id=node_id, reason=message)
        self._refused[node_id] = _Refused(node_class, message, time.monotonic())

    async def _list_pods(self) -> list[Any]:
        try:
            pods = await self._call(
                self._core.list_namespaced_pod,
                self.namespace,
                label_selector=POD_SELECTOR,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise self._unavailable(exc) from exc
        items: list[Any] = pods.items
        return items

    async def _refresh_largest(self) -> None:
        read_at = self._nodes_read_at
        if read_at is None or time.monotonic() - read_at >= NODES_REFRESH:
            await asyncio.to_thread(self.read_nodes)

    def read_nodes(self) -> None:
        """Update :meth:`largest` from the cluster's nodes (blocking); a refusal or an
        outage leaves the last figure (RBAC may not grant listing nodes)."""
        try:
            nodes = self._core.list_node(_request_timeout=REQUEST_TIMEOUT)
        except (ApiException, urllib3.exceptions.HTTPError):
            return
        self._largest = largest_ready(nodes.items)
        self._nodes_read_at = time.monotonic()

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(method, *args, **kwargs)

    def _unavailable(self, exc: Exception) -> KubernetesUnavailableError:
        if isinstance(exc, ApiException):
            return KubernetesUnavailableError(f"{self.server}: {reason(exc)}")
        cause = getattr(exc, "reason", None) or exc
        return KubernetesUnavailableError(f"{self.server}: {cause}")


def reason(exc: ApiException) -> str:
    """``403 Forbidden: pods "n1" is forbidden: ...``: the status and the server's message."""
    message = ""
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    head = f"{exc.status} {exc.reason}"
    return f"{head}: {message}" if message else head


def pod_resources(capacity: Resources) -> dict[str, str]:
    """A class's capacity as container resource amounts (``2``/``500m``, bytes, GPUs)."""
    whole, rest = divmod(capacity.cpu_millis, 1000)
    amounts = {
        "cpu": str(whole) if not rest else f"{capacity.cpu_millis}m",
        "memory": str(capacity.memory_bytes),
    }
    if capacity.gpus:
        amounts[GPU_RESOURCE] = str(capacity.gpus)
    return amounts


def pod_phase(pod: Any) -> tuple[NodePhase, str]:
    """What an agent pod's status means for its node, and what to tell people."""
    status = pod.status
    if pod.metadata.deletion_timestamp is not None:
        return NodePhase.GONE, "its pod is being deleted"
    phase = status.phase if status is not None else None
    if phase == "Running":
        return NodePhase.RUNNING, ""
    if phase in ("Succeeded", "Failed"):
        why = ": ".join(part for part in (status.reason, status.message) if part)
        return NodePhase.GONE, f"its pod {phase.lower()}" + (f" ({why})" if why else "")
    if phase == "Unknown":
        return NodePhase.RUNNING, "its pod's node stopped reporting"
    for condition in (status.conditions if status is not None else None) or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return NodePhase.STARTING, condition.message or condition.reason or "unscheduled"
    for container in (status.container_statuses if status is not None else None) or []:
        waiting = container.state.waiting if container.state is not None else None
        if waiting is not None and waiting.reason:
            detail = f": {waiting.message}" if waiting.message else ""
            return NodePhase.STARTING, f"{waiting.reason}{detail}"
    return NodePhase.STARTING, ""


def largest_ready(nodes: list[Any]) -> Resources | None:
    """The most CPU, memory and GPUs any Ready, schedulable node has allocatable."""
    best: Resources | None = None
    for node in nodes:
        if node.spec is not None and node.spec.unschedulable:
            continue
        conditions = (node.status.conditions if node.status is not None else None) or []
        if not any(c.type == "Ready" and c.status == "True" for c in conditions):
            continue
        allocatable = node.status.allocatable or {}
        offer = Resources(
            cpu_millis=_amount(allocatable.get("cpu"), 1000),
            memory_bytes=_amount(allocatable.get("memory"), 1),
            gpus=_amount(allocatable.get(GPU_RESOURCE), 1),
        )
        best = (
            offer
            if best is None
            else Resources(
                max(best.cpu_millis, offer.cpu_millis),
                max(best.memory_bytes, offer.memory_bytes),
                max(best.gpus, offer.gpus),
            )
        )
    return best


def _amount(quantity: str | None, scale: int) -> int:
    if not quantity:
        return 0
    value: Decimal = parse_quantity(quantity) * scale  # type: ignore[no-untyped-call]
    return int(value)
