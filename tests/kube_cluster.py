"""One real Kubernetes control plane for the whole test session, with kwok's fake nodes.

:class:`strata.sdk.stack.kube.KubeControlPlane` (etcd, kube-apiserver, kube-scheduler,
kwok) starts in a few seconds from the binaries ``make setup`` builds. A missing binary
fails every test that uses it with a message naming ``make setup``: nothing is skipped.
``tests/conftest.py`` registers :func:`kube_cluster` once for the whole session, so every
module that asks for it shares one control plane, started on first use and stopped when
the session ends. It lives under the tests' stack home (``<home>/kube``), apart from
every other session's.

Nodes are cluster-wide: a test that needs its own makes them with :func:`kwok_node`
and a label only its pods select on.

The conftest loads this module for every session, most of which never use Kubernetes,
so the Kubernetes client (about a second to import here) is imported only by the
helpers that need it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from strata.core.settings import StackSettings, load
from strata.sdk.stack.kube import KWOK_NODE_ANNOTATION, KubeControlPlane
from strata.sdk.stack.server import StartError

if TYPE_CHECKING:
    from kubernetes import client as k8s


@pytest.fixture(scope="session")
async def kube_cluster() -> AsyncIterator[KubeControlPlane]:
    """The session's control plane; a start that fails fails the test with its reason."""
    plane = KubeControlPlane(load(StackSettings).home / "kube")
    try:
        await plane.start()
    except StartError as exc:
        pytest.fail(f"the Kubernetes control plane did not start: {exc}", pytrace=False)
    try:
        yield plane
    finally:
        await plane.stop()


def admin_client(plane: KubeControlPlane) -> k8s.ApiClient:
    """A client of the cluster's admin (``system:masters``)."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(plane.kubeconfig), client_configuration=configuration
    )
    return k8s.ApiClient(configuration)


def new_namespace(core: k8s.CoreV1Api, prefix: str) -> str:
    """A fresh namespace with its ``default`` service account (which, in a cluster, the
    controller-manager makes; pods need it to be admitted)."""
    from kubernetes import client as k8s

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    core.create_namespaced_service_account(
        name, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="default"))
    )
    return name


def kwok_node(
    core: k8s.CoreV1Api,
    name: str,
    labels: dict[str, str],
    cpu: str,
    memory: str,
    gpus: int = 0,
) -> None:
    """A fake node kwok plays the kubelet of: it turns Ready and runs what is bound to it."""
    from kubernetes import client as k8s

    amounts = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    core.create_node(
        k8s.V1Node(
            metadata=k8s.V1ObjectMeta(
                name=name, labels=labels, annotations={KWOK_NODE_ANNOTATION: "fake"}
            ),
            status=k8s.V1NodeStatus(allocatable=amounts, capacity=amounts),
        )
    )
