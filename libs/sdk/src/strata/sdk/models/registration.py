"""``log_model``: convert, prove the conversion on sample rows, upload, register.

The check runs before anything is uploaded: a file whose outputs differ from
the model the user evaluated never becomes a version, so never reaches the gateway.
The converters come from the ``strata-sdk[models]`` extra and are imported when
``log_model`` runs (:mod:`frameworks`), so this module imports without them.

``log_model_sync`` is the same call for scripts and notebooks that do not await:
MLflow users call ``mlflow.sklearn.log_model(...)`` and get the version back. A flag
(``log_model(..., wait=True)``) cannot do that: an ``async def`` always returns a
coroutine, so the flag would change the return type by value. A second name keeps
both typed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import grpc

from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.registry.v1.registry_pb2_grpc import ModelRegistryServiceStub
from strata.core.errors import StrataError
from strata.core.rpc.client import channel
from strata.core.rpc.status import field_violations
from strata.core.rpc.tls import channel_credentials
from strata.core.settings import AuthSettings, ModeSettings, ServiceSettings, TlsSettings, load
from strata.sdk.models import frameworks
from strata.sdk.models.errors import RegistryError
from strata.sdk.models.tolerance import Tolerance
from strata.sdk.models.upload import ONNX_MEDIA_TYPE, ArtifactFile, upload

T = TypeVar("T")
P = ParamSpec("P")

ONNX_FILE = "model.onnx"
DEFAULT_TOLERANCE = Tolerance()
"""Float32 ONNX against float64 scikit-learn: 1e-4 absolute plus 1e-4 relative."""


async def log_model(
    model: Any,
    *,
    name: str,
    sample: Any,
    registry: ModelRegistryServiceStub | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    artifacts: Sequence[ArtifactFile] = (),
    metrics: Mapping[str, float] | None = None,
    lineage: pb.Lineage | None = None,
    feature_bindings: Sequence[pb.FeatureBinding] = (),
    generation: pb.GenerationCode | None = None,
    curves: Sequence[pb.Curve] = (),
    description: str = "",
    labels: Mapping[str, str] | None = None,
    owner: str = "",
    task: str = "",
    request_id: str = "",
) -> pb.ModelVersion:
    """Register a fitted scikit-learn or LightGBM ``model`` as a new version of model ``name``.

    ``sample`` (rows shaped like the training features) is run through the model
    and its ONNX conversion; outputs further apart than ``tolerance`` raise
    :class:`~strata.sdk.models.errors.OutputMismatchError` and nothing is uploaded.
    The SDK adds the dependencies, the model definition, the framework and the
    hyperparameters (``get_params()`` as ``params``); the registry reads the
    signature from the ONNX file. ``artifacts``, ``metrics``, ``lineage`` and the
    rest are the caller's kinds. The model is created if it does not exist.
    ``registry`` defaults to the registry the settings name
    (``STRATA_SERVICE_HOST`` / ``STRATA_SERVICE_REGISTRY_PORT``); ``request_id``
    makes a retry return the same version instead of a second one. Without the
    ``strata-sdk[models]`` extra it raises
    :class:`~strata.sdk.models.errors.MissingExtraError` naming it.
    """
    frameworks.require()
    from strata.sdk.models import environment
    from strata.sdk.models.conversion import sample_matrix, to_onnx_bytes
    from strata.sdk.models.verification import verify

    rows = sample_matrix(sample)
    onnx = to_onnx_bytes(model, rows)
    verify(onnx, model, rows, tolerance)
    request = pb.RegisterVersionRequest(
        model_name=name,
        metrics=metrics,
        params=environment.hyperparameters(model),
        lineage=lineage,
        feature_bindings=feature_bindings,
        description=description,
        labels=labels,
        request_id=request_id,
        definition=environment.definition(model),
        dependencies=environment.dependencies(),
        generation=environment.generation(model, generation),
        curves=curves,
        owner=owner,
        task=task,
    )
    files = [
        ArtifactFile(ONNX_FILE, pb.ARTIFACT_KIND_ONNX_MODEL, onnx, ONNX_MEDIA_TYPE),
        *artifacts,
    ]
    async with _registry(registry) as stub:
        await _ensure_model(stub, name, description, owner)
        for file in files:
            stored = await _call(upload(stub, name, file), f"uploading {file.name!r}")
            request.artifact_sha256s.append(stored.sha256)
        reply: pb.RegisterVersionResponse = await _call(
            stub.RegisterVersion(request), f"registering a version of {name!r}"
        )
    return reply.model_version


def _blocking(function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """``function`` as a plain call that returns its result.

    Run on a fresh event loop; where one is already running (a notebook cell), on a
    fresh loop in a thread of its own, since a running loop cannot be blocked on.
    """

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(function(*args, **kwargs))
        with ThreadPoolExecutor(max_workers=1) as thread:
            return thread.submit(asyncio.run, function(*args, **kwargs)).result()

    return run


log_model_sync = _blocking(log_model)
log_model_sync.__doc__ = """``log_model`` for code that does not ``await``: returns the version.

Same arguments as :func:`log_model`. A ``registry`` stub belongs to the event loop
its channel was opened on, so callers of this function leave ``registry`` unset
and the settings name the registry.
"""


async def _ensure_model(
    stub: ModelRegistryServiceStub, name: str, description: str, owner: str
) -> None:
    try:
        await stub.CreateModel(
            pb.CreateModelRequest(name=name, description=description, owner=owner)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise _refusal(error, f"creating model {name!r}") from None


@asynccontextmanager
async def _registry(
    given: ModelRegistryServiceStub | None,
) -> AsyncIterator[ModelRegistryServiceStub]:
    if given is not None:
        yield given
        return
    services = load(ServiceSettings)
    try:
        chan = channel(
            f"{services.host}:{services.registry_port}",
            load(AuthSettings),
            mode=load(ModeSettings).mode,
            credentials=channel_credentials(load(TlsSettings)),
        )
    except StrataError as error:
        raise RegistryError(f"cannot reach the registry: {error}") from None
    async with chan:
        yield ModelRegistryServiceStub(chan)


async def _call(call: Awaitable[T], what: str) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise _refusal(error, what) from None


def _refusal(error: grpc.aio.AioRpcError, what: str) -> RegistryError:
    violations = field_violations(error)
    reason = "; ".join(f"{f}: {p}" for f, p in violations.items()) or error.details()
    return RegistryError(f"{what}: the registry answered {error.code().name}: {reason}")
