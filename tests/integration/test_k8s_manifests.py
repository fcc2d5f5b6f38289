"""Every manifest under deploy/k8s/ is accepted by a real API server (server-side dry run).

``dryRun=All`` runs a create through authentication, admission, defaulting and
validation without storing anything, and strict field validation refuses a field the
API does not know, so a typo in a manifest fails here, not at ``kubectl apply``.
Namespaced objects are dry-run in a namespace of the test's own (the manifests' own
``strata`` namespace is itself only dry-run, so it never exists here).
"""

from __future__ import annotations

import copy
import importlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from pydantic_settings import BaseSettings

from strata.sdk.stack.kube import KubeControlPlane
from tests.kube_cluster import admin_client

pytestmark = pytest.mark.integration

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
SETTINGS_MODULES = (
    "strata.core.settings",
    "strata.agent.settings",
    "strata.gateway.settings",
    "strata.provisioner.settings",
    "strata.registry.settings",
    "strata.scheduler.clock",
)
"""Where every ``STRATA_*`` settings class of the services is defined."""


def documents() -> list[tuple[str, dict[str, Any]]]:
    """Each object of each manifest, named ``<file>: <Kind>/<name>``."""
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append(
                    (f"{path.name}: {document['kind']}/{document['metadata']['name']}", document)
                )
    return found


def strata_settings() -> set[str]:
    """Every ``STRATA_*`` variable a Strata process reads: each settings class's prefix
    and field names."""
    names: set[str] = set()
    for module in map(importlib.import_module, SETTINGS_MODULES):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseSettings):
                prefix = str(value.model_config.get("env_prefix", ""))
                names |= {f"{prefix}{field}".upper() for field in value.model_fields}
    return names


def variables_set(document: dict[str, Any]) -> list[str]:
    """The ``STRATA_*`` variables a ConfigMap holds or a Deployment's containers set."""
    if document["kind"] == "ConfigMap":
        names = list(document["data"])
    elif document["kind"] == "Deployment":
        containers = document["spec"]["template"]["spec"]["containers"]
        names = [variable["name"] for c in containers for variable in c.get("env", [])]
    else:
        names = []
    return [name for name in names if name.startswith("STRATA_")]


@pytest.fixture(scope="module")
def api(kube_cluster: KubeControlPlane) -> Iterator[k8s.ApiClient]:
    with admin_client(kube_cluster) as client:
        yield client


@pytest.fixture(scope="module")
def cluster(api: k8s.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The dynamic client: it sends a manifest as written, where the typed client would
    first check it against its own models and refuse what the server never sees."""
    cache = tmp_path_factory.mktemp("discovery") / "cache.json"
    return DynamicClient(api, cache_file=str(cache))  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def namespace(api: k8s.ApiClient) -> str:
    name = f"manifests-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def dry_run(cluster: Any, document: dict[str, Any], namespace: str) -> None:
    """Create ``document`` with ``dryRun=All`` and strict field validation; a refusal
    raises :class:`ApiException` with the server's reason."""
    resource = cluster.resources.get(api_version=document["apiVersion"], kind=document["kind"])
    document = copy.deepcopy(document)
    if resource.namespaced:
        document["metadata"]["namespace"] = namespace
    cluster.create(
        resource,
        body=document,
        namespace=namespace if resource.namespaced else None,
        dry_run="All",
        query_params=[("fieldValidation", "Strict")],
    )


def refusal(exc: ApiException) -> str:
    """The server's message in a refusal, else its status line."""
    try:
        message = str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        message = str(exc.body)
    return f"{exc.status} {exc.reason}: {message}"


def test_the_manifests_hold_the_six_services_and_the_provisioners_rights() -> None:
    names = {name.split(": ", 1)[1] for name, _ in documents()}
    for service in ("scheduler", "provisioner", "agent", "streamer", "registry", "gateway"):
        assert f"Deployment/strata-{service}" in names
    assert {"ServiceAccount/strata-provisioner", "Role/strata-provisioner"} <= names
    (role,) = [d for n, d in documents() if n.endswith("Role/strata-provisioner")]
    (rule,) = role["rules"]
    assert rule["resources"] == ["pods"]
    assert {"create", "delete", "list", "watch"} <= set(rule["verbs"])


def test_every_setting_the_manifests_set_is_one_strata_reads() -> None:
    # The settings ignore unknown variables, so a misspelt one would be silently unused.
    known = strata_settings()
    assert {"STRATA_POSTGRES_HOST", "STRATA_AGENT_PROVISIONER"} <= known
    unknown = [
        f"{name}: {variable}"
        for name, document in documents()
        for variable in variables_set(document)
        if variable not in known
    ]
    assert unknown == []


def test_every_manifest_passes_a_server_side_dry_run(
    api: k8s.ApiClient, cluster: Any, namespace: str
) -> None:
    refused = []
    for name, document in documents():
        try:
            dry_run(cluster, document, namespace)
        except ApiException as exc:
            refused.append(f"{name}: {refusal(exc)}")
    assert refused == []
    # Nothing was stored.
    assert k8s.AppsV1Api(api).list_namespaced_deployment(namespace).items == []


@pytest.mark.parametrize(
    ("breakage", "why"),
    [
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("image"), "image"),
        (lambda d: d["spec"]["template"]["spec"].update(contaners=[]), "contaners"),
        (lambda d: d["spec"]["template"]["metadata"]["labels"].clear(), "selector"),
    ],
    ids=["no image", "unknown field", "selector matches no pod"],
)
def test_a_broken_manifest_is_refused(
    cluster: Any, namespace: str, breakage: Any, why: str
) -> None:
    (deployment,) = [d for n, d in documents() if n.endswith("Deployment/strata-scheduler")]
    broken = copy.deepcopy(deployment)
    breakage(broken)

    with pytest.raises(ApiException) as refused:
        dry_run(cluster, broken, namespace)

    assert refused.value.status in (400, 422)
    assert why in refusal(refused.value)
