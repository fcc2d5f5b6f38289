"""``strata models list|show|promote|audit``: the registry's models and aliases, for people.

``show`` takes ``NAME`` (the latest version), ``NAME:VERSION`` or ``NAME@ALIAS``.
``promote`` moves an alias with a compare-and-set on the version it was read at, so
the line it prints (``champion: version 1 -> 2``) is what happened, even when
someone else promotes at the same moment. Each failure becomes one line naming what
is wrong (the model, the version, the alias, the reference, or the registry's
address), never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.rpc.status import field_violations
from strata.sdk.client import CommandError, service_channel

REGISTRY = "strata.registry.v1.ModelRegistryService"
T = TypeVar("T")

_REFERENCE = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>[^:@]*)|@(?P<alias>[^:@]*))?$")


@dataclass(frozen=True)
class Reference:
    """What ``show`` was asked for: a model and at most one of a version or an alias."""

    name: str
    version: int = 0
    """0: the latest version (or the alias, when one is named)."""
    alias: str = ""

    @classmethod
    def parse(cls, text: str) -> Reference:
        """``NAME``, ``NAME:VERSION`` (a positive integer) or ``NAME@ALIAS``."""
        match = _REFERENCE.match(text)
        if match is None:
            raise CommandError(f"{text!r}: expected NAME, NAME:VERSION or NAME@ALIAS")
        version, alias = match["version"], match["alias"]
        if version is not None:
            if not version.isdigit() or int(version) < 1:
                raise CommandError(
                    f"{text!r}: the version after ':' must be a positive integer, got {version!r}"
                )
            return cls(match["name"], version=int(version))
        if alias is not None:
            if not alias:
                raise CommandError(f"{text!r}: expected an alias name after '@'")
            return cls(match["name"], alias=alias)
        return cls(match["name"])


async def list_models(out: Console) -> None:
    """A table of every model: latest version, aliases, owner and creation."""
    table = Table("name", "latest", "aliases", "owner", "created", "by")
    token = ""
    async with _channel() as chan:
        stub = ModelRegistryServiceStub(chan)
        while True:
            request = pb.ListModelsRequest(page_token=token)
            page: pb.ListModelsResponse = await _call(stub.ListModels(request), "list")
            for model in page.models:
                table.add_row(
                    model.name,
                    str(model.latest_version or "-"),
                    _aliases(model.aliases) or "-",
                    model.owner or "-",
                    _time(model.created_at),
                    model.created_by,
                )
            token = page.next_page_token
            if not token:
                break
    out.print(table)


async def show(reference: str, out: Console) -> None:
    """One version with every kind of artifact it holds; the latest one for a bare name."""
    ref = Reference.parse(reference)
    async with _channel() as chan:
        stub = ModelRegistryServiceStub(chan)
        if ref.alias:
            request = pb.GetVersionRequest(model_name=ref.name, alias=ref.alias)
        else:
            number = ref.version or await _latest(stub, ref.name)
            request = pb.GetVersionRequest(model_name=ref.name, version=number)
        reply: pb.GetVersionResponse = await _call(stub.GetVersion(request), reference)
    _print_version(reply.model_version, out)


async def promote(name: str, version: int, alias: str, reason: str, out: Console) -> None:
    """Point ``alias`` of model ``name`` at ``version``; one line saying what moved."""
    async with _channel() as chan:
        stub = ModelRegistryServiceStub(chan)
        reply: pb.GetModelResponse = await _call(stub.GetModel(pb.GetModelRequest(name=name)), name)
        before = reply.model.aliases.get(alias, 0)
        request = pb.SetAliasRequest(
            model_name=name, alias=alias, version=version, expected_version=before, reason=reason
        )
        await _call(stub.SetAlias(request), f"promoting {name}:{version} to {alias!r}")
    if before == version:
        out.print(f"{name}: {alias} already points at version {version}")
    else:
        was = f"version {before}" if before else "nothing"
        out.print(f"{name}: {alias} -> version {version} (was {was})")


async def audit(name: str, limit: int, out: Console) -> None:
    """The newest ``limit`` changes made to model ``name``, newest first."""
    if limit < 1:
        raise CommandError(f"--limit must be at least 1, got {limit}")
    table = Table("time", "who", "action", "version", "alias", "was", "artifact", "reason")
    token, shown = "", 0
    async with _channel() as chan:
        stub = ModelRegistryServiceStub(chan)
        await _call(stub.GetModel(pb.GetModelRequest(name=name)), name)
        while shown < limit:
            request = pb.GetAuditLogRequest(
                model_name=name, page_size=min(limit - shown, 1000), page_token=token
            )
            page: pb.GetAuditLogResponse = await _call(stub.GetAuditLog(request), "audit")
            for entry in page.entries:
                table.add_row(
                    _time(entry.occurred_at),
                    entry.principal,
                    pb.AuditAction.Name(entry.action).removeprefix("AUDIT_ACTION_").lower(),
                    str(entry.version or "-"),
                    entry.alias or "-",
                    str(entry.previous_version or "-"),
                    entry.artifact_sha256[:12] or "-",
                    entry.reason or "-",
                )
            shown += len(page.entries)
            token = page.next_page_token
            if not token:
                break
    out.print(table)


async def _latest(stub: ModelRegistryServiceStub, name: str) -> int:
    reply: pb.GetModelResponse = await _call(stub.GetModel(pb.GetModelRequest(name=name)), name)
    if not reply.model.latest_version:
        raise CommandError(f"model {name!r} has no versions yet")
    return reply.model.latest_version


def _print_version(version: pb.ModelVersion, out: Console) -> None:
    """Every kind the registry holds for a version, the ones left empty as '-'.

    Lines are printed as they are (no markup: a parameter may read ``[1, 2]``) and
    left for the terminal to wrap, so a long one stays one line in a pipe.
    """

    def say(text: str) -> None:
        out.print(text, soft_wrap=True, markup=False, highlight=False)

    say(f"{version.model_name} version {version.version}")
    aliases = ", ".join(sorted(version.aliases))
    say(f"aliases: {aliases or '-'}")
    say(f"created: {_time(version.created_at)} by {version.created_by}")
    say(f"owner: {version.owner or '-'}; task: {version.task or '-'}")
    if version.description:
        say(f"description: {version.description}")
    definition = version.definition
    opsets = _pairs({domain or "ai.onnx": str(v) for domain, v in definition.onnx_opsets.items()})
    say(
        f"definition: {definition.model_class or '-'} ({definition.architecture or '-'}); "
        f"ONNX IR {definition.onnx_ir_version}, opsets {opsets or '-'}; "
        f"by {definition.producer_name or '-'} {definition.producer_version}".rstrip()
    )
    say(f"inputs: {_tensors(version.signature.inputs)}")
    say(f"outputs: {_tensors(version.signature.outputs)}")
    deps = version.dependencies
    say(f"dependencies: python {deps.python_version or '-'}; {_pairs(deps.packages) or '-'}")
    gen = version.generation
    say(
        f"generation: {gen.framework or '-'} {gen.framework_version}; "
        f"entry point {gen.entry_point or '-'}; split {gen.split or '-'}; "
        f"experiments {gen.experiment_count}; search space {_pairs(gen.search_space) or '-'}"
    )
    say(f"data: {_lineage(version.lineage)}")
    for binding in version.feature_bindings:
        say(f"features of {binding.input}: {', '.join(binding.features)}")
    say(f"metrics: {_pairs({k: f'{v:g}' for k, v in version.metrics.items()}) or '-'}")
    say(f"params: {_pairs(version.params) or '-'}")
    say(f"labels: {_pairs(version.labels) or '-'}")
    for curve in version.curves:
        say(f"curve: {curve.name} ({curve.y_label} by {curve.x_label}, {len(curve.x)} points)")
    table = Table("artifact", "kind", "media type", "bytes", "sha256")
    for artifact in version.artifacts:
        table.add_row(
            artifact.name,
            pb.ArtifactKind.Name(artifact.kind).removeprefix("ARTIFACT_KIND_").lower(),
            artifact.media_type or "-",
            f"{artifact.size_bytes:,}",
            artifact.sha256,
        )
    out.print(table)


def _lineage(lineage: pb.Lineage) -> str:
    parts = [
        f"training run {lineage.training_run_id}" if lineage.training_run_id else "",
        f"training set {lineage.training_set_id}" if lineage.training_set_id else "",
        f"sha256 {lineage.training_set_sha256}" if lineage.training_set_sha256 else "",
        f"{len(lineage.dataset_partitions)} partitions" if lineage.dataset_partitions else "",
        ", ".join(f"view {ref.name} v{ref.version}" for ref in lineage.feature_views),
        f"{len(lineage.task_attempts)} task attempts" if lineage.task_attempts else "",
        f"bundle {lineage.code_bundle.sha256}" if lineage.code_bundle.sha256 else "",
    ]
    return "; ".join(part for part in parts if part) or "-"


def _tensors(specs: Iterable[pb.TensorSpec]) -> str:
    shown = [
        f"{s.name} {s.datatype} [{', '.join('?' if d < 0 else str(d) for d in s.shape)}]"
        for s in specs
    ]
    return ", ".join(shown) or "-"


def _aliases(aliases: Mapping[str, int]) -> str:
    return ", ".join(f"{alias}={version}" for alias, version in sorted(aliases.items()))


def _pairs(values: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(values.items()))


def _time(stamp: Timestamp) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def _channel() -> grpc.aio.Channel:
    return service_channel(
        "registry",
        idempotent=(
            f"{REGISTRY}/GetModel",
            f"{REGISTRY}/ListModels",
            f"{REGISTRY}/GetVersion",
            f"{REGISTRY}/GetAuditLog",
        ),
    )


async def _call(call: Awaitable[T], what: str) -> T:
    """The reply of ``call``, or a CommandError saying in one line what went wrong."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        violations = field_violations(error)
        if violations:
            fields = "; ".join(f"{field}: {problem}" for field, problem in violations.items())
            raise CommandError(f"{what} refused: {fields}") from None
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CommandError(f"the registry is not reachable: {error.details()}") from None
        if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            raise CommandError(str(error.details())) from None
        raise CommandError(f"{what}: {code.name}: {error.details()}") from None
