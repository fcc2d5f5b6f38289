"""The feature views a model version reads, fetched from the feature store's catalog.

The gateway asks the streamer (``FeatureService.GetFeatureView`` over gRPC) when it
loads a version, not on each request: the plan of the version's bindings
(:mod:`strata.transforms.featurize`) is built once, beside its ONNX session. A view the
version's lineage names is fetched at that version, the one its training set was
built from; any other at its current version. Asking over gRPC rather than following
``FeatureViewApplied`` on Kafka keeps one source of truth for a spec (the streamer's
catalog) and lets the gateway load a version while Kafka is down.
"""

from __future__ import annotations

import grpc

from strata.api.features.v1 import features_pb2 as fpb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.api.registry.v1 import registry_pb2 as pb
from strata.core.errors import InvalidArgumentError
from strata.transforms.featurize import FeaturePlan, TensorSpec, ViewUse, bound_views, plan
from strata.transforms.spec import view_from_spec

FEATURES = "strata.features.v1.FeatureService"


class CatalogUnavailableError(Exception):
    """The feature store did not answer; the version is tried again later."""


class ViewCatalog:
    """Builds the feature plan of a model version from the views the streamer holds."""

    def __init__(self, stub: FeatureServiceStub) -> None:
        self._stub = stub

    async def plan(
        self, version: pb.ModelVersion, inputs: tuple[TensorSpec, ...]
    ) -> FeaturePlan | None:
        """The plan of ``version``'s bindings; None when it has none (tensors only).

        ValueError names what is wrong with the bindings or a view (the version is
        refused); CatalogUnavailableError says the streamer could not be asked.
        """
        bindings = [(b.input, list(b.features)) for b in version.feature_bindings]
        if not bindings:
            return None
        pinned = {ref.name: ref.version for ref in version.lineage.feature_views}
        names = bound_views(bindings)
        views = {name: await self._view(name, pinned.get(name, 0)) for name in names}
        return plan(bindings, inputs, views)

    async def _view(self, name: str, version: int) -> ViewUse:
        request = fpb.GetFeatureViewRequest(name=name, version=version)
        try:
            reply = await self._stub.GetFeatureView(request)
        except grpc.aio.AioRpcError as error:
            which = f"feature view {name!r}" + (f" version {version}" if version else "")
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                raise ValueError(f"{which}: {error.details()}") from None
            raise CatalogUnavailableError(
                f"cannot read {which} from the feature store: {error.code().name}: "
                f"{error.details()}"
            ) from None
        try:
            view = view_from_spec(reply.feature_view.spec)
        except InvalidArgumentError as error:
            raise ValueError(f"feature view {name!r} cannot be compiled: {error}") from None
        return ViewUse(view, reply.feature_view.version)
