"""The kubernetes provider against a real API server and scheduler, with kwok's fake nodes.

The provider runs as the ``strata-provisioner`` user with exactly the RBAC of
``deploy/k8s/20-provisioner-rbac.yaml`` (bound to that user instead of the service
account), so these tests also show the manifests grant what it needs. kwok plays the
kubelet: a pod bound to a fake node turns Running without running the agent image,
which is all the provider's interface is about.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpc_health.v1.health_pb2_grpc import HealthStub
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from service_processes import running

from strata.api.common.v1.envelope_pb2 import Envelope
from strata.api.common.v1.refs_pb2 import BundleRef, TaskAttemptRef
from strata.api.common.v1.resources_pb2 import Resources as CommonResources
from strata.api.provisioner.v1 import provisioner_pb2 as pb
from strata.api.provisioner.v1.provisioner_pb2_grpc import ProvisionerServiceStub
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.bus import Bus
from strata.core.settings import KafkaSettings, load
from strata.core.topics import TASKS_EVENTS
from strata.provisioner.domain.resources import Resources
from strata.provisioner.providers import NodeClassSpec, NodePhase, ObservedNode
from strata.provisioner.providers.kubernetes import (
    KubernetesProvider,
    KubernetesUnavailableError,
)
from strata.sdk.stack.kube import PROVISIONER_USER, KubeControlPlane, free_port
from tests.kube_cluster import admin_client, kwok_node, new_namespace

pytestmark = pytest.mark.integration

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "20-provisioner-rbac.yaml"
GIB = 1024**3
SMALL = NodeClassSpec("small", "kubernetes", Resources(2000, 8 * GIB))
LARGE = NodeClassSpec("large", "kubernetes", Resources(8000, 32 * GIB))
POOL_LABEL = "strata.test/pool"
TOKENS = {"agent-token": {"principal": "agent-1", "roles": ["agent"]}}
AGENT = (("authorization", "Bearer agent-token"),)
VIEWER_TOKEN = {"viewer-token": {"principal": "bob", "roles": ["viewer"]}}
VIEWER = (("authorization", "Bearer viewer-token"),)
WAIT = 30.0
"""Most seconds a pod may take to reach a phase before the test fails (a hang, not a
measure: kwok reacts within milliseconds)."""


def manifest(api: k8s.ApiClient, kind: str) -> Any:
    """The object of ``kind`` in the provisioner's RBAC manifest, as the client's model
    (``V1Role``...), so that the rules granted here are the manifest's own."""
    for document in yaml.safe_load_all(RBAC.read_text()):
        if document["kind"] == kind:
            return api.deserialize(json.dumps(document), f"V1{kind}", "application/json")
    raise AssertionError(f"no {kind} in {RBAC}")


@pytest.fixture(scope="module")
def core(kube_cluster: KubeControlPlane) -> Iterator[k8s.CoreV1Api]:
    with admin_client(kube_cluster) as api:
        yield k8s.CoreV1Api(api)


@pytest.fixture(scope="module")
def node_reader(kube_cluster: KubeControlPlane, core: k8s.CoreV1Api) -> Iterator[None]:
    """The manifest's ClusterRole (read nodes), bound to the provisioner's user."""
    rbac = k8s.RbacAuthorizationV1Api(core.api_client)
    role: k8s.V1ClusterRole = manifest(core.api_client, "ClusterRole")
    name = f"strata-provisioner-nodes-{uuid.uuid4().hex[:8]}"
    role.metadata = k8s.V1ObjectMeta(name=name)
    rbac.create_cluster_role(role)
    rbac.create_cluster_role_binding(
        k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=name),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name
            ),
            subjects=[
                k8s.RbacV1Subject(
                    kind="User", name=PROVISIONER_USER, api_group="rbac.authorization.k8s.io"
                )
            ],
        )
    )
    yield
    rbac.delete_cluster_role_binding(name)
    rbac.delete_cluster_role(name)


@pytest.fixture
def namespace(kube_cluster: KubeControlPlane, core: k8s.CoreV1Api, node_reader: None) -> str:
    """A namespace of this test where the provisioner's user has the manifest's Role."""
    name = new_namespace(core, "provider")
    rbac = k8s.RbacAuthorizationV1Api(core.api_client)
    role: k8s.V1Role = manifest(core.api_client, "Role")
    role.metadata = k8s.V1ObjectMeta(name="strata-provisioner", namespace=name)
    rbac.create_namespaced_role(name, role)
    rbac.create_namespaced_role_binding(
        name,
        k8s.V1RoleBinding(
            metadata=k8s.V1ObjectMeta(name="strata-provisioner"),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="strata-provisioner"
            ),
            subjects=[
                k8s.RbacV1Subject(
                    kind="User", name=PROVISIONER_USER, api_group="rbac.authorization.k8s.io"
                )
            ],
        ),
    )
    return name


@pytest.fixture
def pool() -> str:
    """This test's nodes: its pods select them, so other tests' nodes never take them."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def provider(
    kube_cluster: KubeControlPlane, namespace: str, pool: str
) -> AsyncIterator[KubernetesProvider]:
    provider = KubernetesProvider.connect(
        kubeconfig=kube_cluster.provisioner_kubeconfig,
        namespace=namespace,
        image="strata/agent:test",
        agent_env={"STRATA_AGENT_PROVISIONER": "strata-provisioner:50052"},
        config_maps=("strata-config",),
        secrets=("strata-secrets",),
        node_selector={POOL_LABEL: pool},
        retry_refused=0.0,
    )
    yield provider
    await provider.close()


def add_node(core: k8s.CoreV1Api, pool: str, cpu: str, memory: str, gpus: int = 0) -> str:
    name = f"kwok-{pool}-{uuid.uuid4().hex[:6]}"
    kwok_node(core, name, {POOL_LABEL: pool}, cpu, memory, gpus)
    return name


async def until(
    provider: KubernetesProvider, node_id: str, wanted: Callable[[ObservedNode], bool]
) -> ObservedNode:
    """What ``observe`` says of ``node_id`` once ``wanted`` holds; fails after ``WAIT``."""
    deadline = time.monotonic() + WAIT
    last: ObservedNode | None = None
    while time.monotonic() < deadline:
        last = next((o for o in await provider.observe() if o.node_id == node_id), None)
        if last is not None and wanted(last):
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node_id} never got there; last observed: {last}")


async def until_deleted(core: k8s.CoreV1Api, name: str, namespace: str) -> None:
    """Returns once the API server answers 404 for pod ``name``; fails after ``WAIT``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        await asyncio.sleep(0.05)
    raise AssertionError(f"pod {name} was still there after {WAIT:.0f} s")


def uid(pod: k8s.V1Pod) -> str | None:
    assert pod.metadata is not None
    return pod.metadata.uid


def in_phase(phase: NodePhase) -> Callable[[ObservedNode], bool]:
    return lambda observed: observed.phase is phase


async def test_a_node_is_an_agent_pod_of_its_class_that_runs(
    provider: KubernetesProvider, core: k8s.CoreV1Api, namespace: str, pool: str
) -> None:
    node = add_node(core, pool, "4", "16Gi")

    await provider.start("small-a1", SMALL)
    running = await until(provider, "small-a1", in_phase(NodePhase.RUNNING))

    assert running == ObservedNode("small-a1", "small", NodePhase.RUNNING)
    pod = core.read_namespaced_pod("small-a1", namespace)
    assert pod.spec is not None
    assert pod.spec.node_name == node
    (container,) = pod.spec.containers
    assert container.image == "strata/agent:test"
    class_amounts = {"cpu": "2", "memory": str(8 * GIB)}
    assert container.resources is not None
    assert container.resources.requests == class_amounts
    assert container.resources.limits == class_amounts
    env = {e.name: e for e in container.env or []}
    node_id = env["STRATA_AGENT_NODE_ID"].value_from
    assert node_id is not None
    assert node_id.field_ref is not None
    assert node_id.field_ref.field_path == "metadata.name"
    assert env["STRATA_AGENT_MEMORY_BYTES"].value == str(8 * GIB)
    assert env["STRATA_AGENT_CPU_MILLIS"].value == "2000"
    assert env["STRATA_AGENT_PROVISIONER"].value == "strata-provisioner:50052"
    # The blob store's settings and the agent's token come from a ConfigMap and a Secret,
    # never written into the pod spec.
    sources = [(f.config_map_ref, f.secret_ref) for f in container.env_from or []]
    assert [(c.name if c else None, s.name if s else None) for c, s in sources] == [
        ("strata-config", None),
        (None, "strata-secrets"),
    ]
    # Starting it again (a retry, a restarted provisioner) leaves the pod as it is.
    await provider.start("small-a1", SMALL)
    assert uid(core.read_namespaced_pod("small-a1", namespace)) == uid(pod)


async def test_a_pod_too_big_waits_with_the_schedulers_reason_until_a_node_fits(
    provider: KubernetesProvider, core: k8s.CoreV1Api, pool: str
) -> None:
    add_node(core, pool, "2", "8Gi")

    await provider.start("large-b1", LARGE)
    waiting = await until(provider, "large-b1", lambda o: bool(o.message))

    assert waiting.phase is NodePhase.STARTING
    assert "nodes are available" in waiting.message
    assert "Insufficient memory" in waiting.message
    assert "Insufficient cpu" in waiting.message

    add_node(core, pool, "16", "64Gi")
    assert (await until(provider, "large-b1", in_phase(NodePhase.RUNNING))).message == ""
    assert await provider.check() is None
    largest = provider.largest()
    assert largest is not None
    assert Resources(16000, 64 * GIB).fits_in(largest)


async def test_a_deleted_pod_is_a_gone_node(
    provider: KubernetesProvider, core: k8s.CoreV1Api, namespace: str, pool: str
) -> None:
    add_node(core, pool, "4", "16Gi")
    await provider.start("small-c1", SMALL)
    await until(provider, "small-c1", in_phase(NodePhase.RUNNING))

    core.delete_namespaced_pod("small-c1", namespace)
    gone = await until(provider, "small-c1", in_phase(NodePhase.GONE))

    assert gone.node_class == "small"
    assert "deleted" in gone.message


async def test_an_evicted_pod_is_a_gone_node_with_the_kubelets_reason(
    provider: KubernetesProvider, core: k8s.CoreV1Api, namespace: str, pool: str
) -> None:
    add_node(core, pool, "4", "16Gi")
    await provider.start("small-f1", SMALL)
    await until(provider, "small-f1", in_phase(NodePhase.RUNNING))

    # What a kubelet writes when it evicts a pod (kwok's fake kubelet never does).
    evicted = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."}
    core.patch_namespaced_pod_status("small-f1", namespace, {"status": evicted})
    gone = await until(provider, "small-f1", in_phase(NodePhase.GONE))

    assert gone.message == "its pod failed (Evicted: The node was low on memory.)"


async def test_stop_deletes_the_pod_and_the_node_is_no_longer_reported(
    provider: KubernetesProvider, core: k8s.CoreV1Api, namespace: str, pool: str
) -> None:
    add_node(core, pool, "4", "16Gi")
    await provider.start("small-d1", SMALL)
    await provider.start("small-d2", SMALL)
    await until(provider, "small-d1", in_phase(NodePhase.RUNNING))

    await provider.stop("small-d1")
    await provider.stop("small-d1")  # stopping twice is a no-op

    observed = {o.node_id for o in await provider.observe()}
    assert "small-d1" not in observed
    assert "small-d2" in observed
    await until_deleted(core, "small-d1", namespace)


async def test_a_pod_the_api_refuses_is_the_nodes_message_until_it_is_accepted(
    provider: KubernetesProvider, core: k8s.CoreV1Api, namespace: str, pool: str
) -> None:
    add_node(core, pool, "4", "16Gi")
    core.create_namespaced_limit_range(namespace, memory_limit("1Gi"))

    await provider.start("small-e1", SMALL)  # refused: no exception
    (refused,) = [o for o in await provider.observe() if o.node_id == "small-e1"]

    assert refused.phase is NodePhase.STARTING
    assert "403 Forbidden" in refused.message
    assert "maximum memory usage per Container is 1Gi" in refused.message

    # Raised, not deleted: with no LimitRange in its cache, the admission plugin would
    # use what it last looked up live for up to 30 s.
    core.replace_namespaced_limit_range("memory", namespace, memory_limit("16Gi"))
    await until(provider, "small-e1", in_phase(NodePhase.RUNNING))


def memory_limit(most: str) -> k8s.V1LimitRange:
    """At most ``most`` of memory per container in the namespace."""
    return k8s.V1LimitRange(
        metadata=k8s.V1ObjectMeta(name="memory"),
        spec=k8s.V1LimitRangeSpec(
            limits=[k8s.V1LimitRangeItem(type="Container", max={"memory": most})]
        ),
    )


async def test_check_names_the_server_and_why_it_does_not_serve(
    provider: KubernetesProvider, kube_cluster: KubeControlPlane, namespace: str, tmp_path: Path
) -> None:
    assert await provider.check() is None

    wrong_token = tmp_path / "token"
    wrong_token.write_text("not-a-token\n")
    refused = KubernetesProvider.connect(
        server=kube_cluster.server,
        token_file=wrong_token,
        ca_file=kube_cluster.ca_file,
        namespace=namespace,
        image="strata/agent:test",
    )
    why = await refused.check()
    assert why is not None
    assert why.startswith(f"{kube_cluster.server}: 401 Unauthorized")
    with pytest.raises(KubernetesUnavailableError, match="401 Unauthorized"):
        await refused.observe()
    await refused.close()

    closed = f"https://127.0.0.1:{free_port()}"
    unreachable = KubernetesProvider.connect(
        server=closed, token_file=wrong_token, namespace=namespace, image="strata/agent:test"
    )
    why = await unreachable.check()
    assert why is not None
    assert why.startswith(f"{closed}: ")
    assert "refused" in why.lower()
    await unreachable.close()


async def test_the_provisioner_may_only_manage_pods_where_its_role_is_bound(
    kube_cluster: KubeControlPlane, core: k8s.CoreV1Api
) -> None:
    elsewhere = new_namespace(core, "unbound")
    outsider = KubernetesProvider.connect(
        kubeconfig=kube_cluster.provisioner_kubeconfig,
        namespace=elsewhere,
        image="strata/agent:test",
    )
    why = await outsider.check()
    await outsider.close()

    assert why is not None
    assert "403 Forbidden" in why
    assert f'cannot list resource "pods" in API group "" in the namespace "{elsewhere}"' in why


async def test_a_deleted_agent_pod_loses_its_node_at_once_and_its_attempt(
    kube_cluster: KubeControlPlane, core: k8s.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    """The whole path under a real provisioner: an attempt waits for room, the fleet
    creates an agent pod of the class, the pod's agent (played here over Connect with
    the pod's name) takes the attempt, the pod is deleted, and the attempt is lost now,
    not a lease (10 minutes) later."""
    gpus = 7  # no other test's attempt asks for 7 GPUs: only this test's fits the class
    classes = {"kube": {"provider": "kubernetes", "cpu": "1", "memory": "1Gi", "gpu": gpus}}
    # A node that can hold the class: the provisioner refuses a class larger than every
    # node of the cluster (other tests' nodes have no GPU).
    add_node(core, uuid.uuid4().hex[:10], "4", "16Gi", gpus=8)
    lost: asyncio.Queue[pb.TaskLost] = asyncio.Queue()

    async def on_lost(event: pb.TaskLost, envelope: Envelope) -> None:
        lost.put_nowait(event)

    bus = Bus("kubernetes-fleet-test", kafka=load(KafkaSettings))
    consumer = bus.consumer(TASKS_EVENTS, group=f"kube-fleet-{uuid.uuid4().hex[:8]}")
    consumer.handle(pb.TaskLost, on_lost)
    async with (
        running(
            "provisioner",
            tmp_path,
            STRATA_AUTH_TOKENS=json.dumps(TOKENS),
            STRATA_PROVISIONER_LEASE="PT10M",
            STRATA_PROVISIONER_FLEET_POLL="0.3",
            STRATA_PROVISIONER_NODE_CLASSES=json.dumps(classes),
            STRATA_PROVISIONER_KUBERNETES_KUBECONFIG=str(kube_cluster.provisioner_kubeconfig),
            STRATA_PROVISIONER_KUBERNETES_NAMESPACE=namespace,
        ) as provisioner,
        bus,
        grpc.aio.insecure_channel(provisioner.address) as channel,
    ):
        request = TaskRequested(
            attempt=TaskAttemptRef(run_id=str(uuid.uuid4()), task_id="train", attempt=1),
            workflow_name="kubernetes-fleet",
            entrypoint="pipeline.tasks:train",
            bundle=BundleRef(uri="s3://bundles/abc.tar.gz", sha256="abc"),
            resources=CommonResources(cpu_millis=500, memory_bytes=GIB // 2, gpus=gpus),
            queue=f"q-{uuid.uuid4().hex[:8]}",
        )
        await bus.publish(request)

        pod = await until_a_pod(core, namespace)
        stub = ProvisionerServiceStub(channel)
        agent = stub.Connect(metadata=AGENT)
        await agent.write(
            pb.ConnectRequest(
                registration=pb.AgentRegistration(
                    node_id=pod,
                    hostname=pod,
                    capacity=CommonResources(cpu_millis=1000, memory_bytes=GIB, gpus=gpus),
                    agent_version="test",
                )
            )
        )
        async with asyncio.timeout(WAIT):
            while not (reply := await agent.read()).HasField("assignment"):
                pass
        assert reply.assignment.attempt == request.attempt

        core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
        async with asyncio.timeout(WAIT):
            while (event := await lost.get()).attempt != request.attempt:
                pass
        assert event.node_id == pod
        assert f"node {pod} is gone" in event.reason, event.reason
        agent.cancel()


async def until_a_pod(core: k8s.CoreV1Api, namespace: str) -> str:
    """The name of the first pod in ``namespace``; fails after ``WAIT``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace).items
        if pods and pods[0].metadata is not None and pods[0].metadata.name:
            return pods[0].metadata.name
        await asyncio.sleep(0.1)
    raise AssertionError(f"no pod was created in {namespace} within {WAIT:.0f} s")


async def test_a_refused_token_is_that_providers_health_not_the_provisioners(
    kube_cluster: KubeControlPlane, namespace: str, tmp_path: Path
) -> None:
    """The Kubernetes API refuses the provisioner's token: that provider's health is
    NOT_SERVING and ListNodeClasses says why, with the address; the provisioner and its
    local provider serve on."""
    wrong_token = tmp_path / "token"
    wrong_token.write_text("not-a-token\n")
    classes = {
        "kube": {"provider": "kubernetes", "cpu": "1", "memory": "1Gi", "gpu": 9},
        "here": {"provider": "local", "cpu": "1", "memory": "1Gi", "gpu": 9},
    }
    async with (
        running(
            "provisioner",
            tmp_path,
            STRATA_AUTH_TOKENS=json.dumps({**TOKENS, **VIEWER_TOKEN}),
            STRATA_PROVISIONER_FLEET_POLL="0.3",
            STRATA_PROVISIONER_NODE_CLASSES=json.dumps(classes),
            STRATA_PROVISIONER_LOCAL_GPUS="9",
            STRATA_PROVISIONER_LOCAL_STATE_DIR=str(tmp_path / "local"),
            STRATA_PROVISIONER_KUBERNETES_SERVER=kube_cluster.server,
            STRATA_PROVISIONER_KUBERNETES_TOKEN_FILE=str(wrong_token),
            STRATA_PROVISIONER_KUBERNETES_CA_FILE=str(kube_cluster.ca_file),
            STRATA_PROVISIONER_KUBERNETES_NAMESPACE=namespace,
        ) as provisioner,
        grpc.aio.insecure_channel(provisioner.address) as channel,
    ):
        health = HealthStub(channel)
        provider_health = HealthCheckRequest(service="strata.provisioner.provider.kubernetes")
        assert await health_once_reported(health, provider_health) == NOT_SERVING
        assert (await health.Check(HealthCheckRequest())).status == SERVING
        local = HealthCheckRequest(service="strata.provisioner.provider.local")
        assert (await health.Check(local)).status == SERVING

        reply = await ProvisionerServiceStub(channel).ListNodeClasses(
            pb.ListNodeClassesRequest(), metadata=VIEWER
        )
        by_name = {c.name: c for c in reply.node_classes}
        assert not by_name["kube"].provider_serving
        assert by_name["kube"].message.startswith(f"{kube_cluster.server}: 401 Unauthorized")
        assert by_name["here"].provider_serving


SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


async def health_once_reported(
    health: HealthStub, request: HealthCheckRequest
) -> HealthCheckResponse.ServingStatus.ValueType:
    """The health of ``request.service`` once the service reports it (before its first
    report, the name is NOT_FOUND); fails after ``WAIT``."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                reply: HealthCheckResponse = await health.Check(request)
                return reply.status
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.1)
