"""``strata features training-set``: a point-in-time training set from a local label file.

The streamer reads labels from, and writes training sets to, the blob store, so
the command moves the files: it stores the label file (Parquet, or CSV converted
to Parquet) under a key named by its sha256, starts ``MaterializeTrainingSet``,
prints the job's progress until it ends, and copies the result to ``--out`` after
checking it against the checksum the streamer recorded. The blob store is the one
``STRATA_BLOB_*`` configures, which must be the streamer's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
from rich.console import Console

from strata.api.features.v1 import features_pb2 as pb
from strata.api.features.v1.features_pb2_grpc import FeatureServiceStub
from strata.core.blobs import open_blob_store
from strata.core.errors import StrataError
from strata.core.settings import BlobSettings, load
from strata.sdk.client import CommandError
from strata.sdk.features.commands import call, connect

POLL = 0.5
"""Seconds between looks at the job's progress."""
RESULT_FILE = "part-0.parquet"
"""The file of a training set's output folder the streamer writes."""
_TERMINAL = (pb.TRAINING_SET_STATE_SUCCEEDED, pb.TRAINING_SET_STATE_FAILED)


async def training_set(
    views: Sequence[str], labels: Path, out_file: Path, time_column: str, out: Console
) -> None:
    """Build a training set of ``views`` (names, or ``view:feature`` references) for ``labels``."""
    content = await asyncio.to_thread(_labels, labels)
    key = f"labels/{hashlib.sha256(content).hexdigest()}.parquet"
    try:
        async with open_blob_store(load(BlobSettings)) as blobs:
            await blobs.put(key, content)
            async with connect() as chan:
                stub = FeatureServiceStub(chan)
                request = pb.MaterializeTrainingSetRequest(
                    labels_uri=key,
                    event_time_column=time_column,
                    features=await _refs(stub, views),
                    request_id=str(uuid.uuid4()),
                )
                started: pb.MaterializeTrainingSetResponse = await call(
                    stub.MaterializeTrainingSet(request), f"training set from {labels}"
                )
                found = await _finished(stub, started.training_set, out)
            if found.state == pb.TRAINING_SET_STATE_FAILED:
                raise CommandError(f"training set {found.training_set_id} failed: {found.message}")
            result = await blobs.get(f"{found.output_uri}/{RESULT_FILE}")
    except (StrataError, OSError) as error:
        raise CommandError(f"the blob store: {error}") from None
    if f"sha256:{hashlib.sha256(result).hexdigest()}" != found.checksum:
        raise CommandError(f"training set {found.training_set_id}: the result's checksum differs")
    await asyncio.to_thread(out_file.write_bytes, result)
    out.print(
        f"training set {found.training_set_id}: {found.rows_written} rows, {found.checksum}, "
        f"written to {out_file}",
        soft_wrap=True,
    )


def _labels(path: Path) -> bytes:
    """The label file as Parquet bytes; CommandError naming the file when it is neither format."""
    try:
        if path.suffix.lower() == ".csv":
            table = pyarrow.csv.read_csv(path)
            sink = io.BytesIO()
            pq.write_table(table, sink)
            return sink.getvalue()
        content = path.read_bytes()
        pq.read_schema(io.BytesIO(content))
        return content
    except (OSError, pa.ArrowInvalid) as error:
        raise CommandError(f"{path}: not a readable Parquet or CSV label file: {error}") from None


async def _refs(stub: FeatureServiceStub, views: Sequence[str]) -> list[str]:
    """Feature references: a ``view:feature`` as given, a view name as all its features."""
    refs: list[str] = []
    for name in views:
        if ":" in name:
            refs.append(name)
            continue
        reply: pb.GetFeatureViewResponse = await call(
            stub.GetFeatureView(pb.GetFeatureViewRequest(name=name)), f"feature view {name!r}"
        )
        refs += [f"{name}:{feature.name}" for feature in reply.feature_view.spec.features]
    return refs


async def _finished(
    stub: FeatureServiceStub, started: pb.TrainingSet, out: Console
) -> pb.TrainingSet:
    """Poll the job until it ends, printing each change of state or progress."""
    found, shown = started, ""
    while True:
        state = pb.TrainingSetState.Name(found.state).removeprefix("TRAINING_SET_STATE_").lower()
        line = f"training set {found.training_set_id}: {state} {found.progress:.0%}"
        if line != shown:
            out.print(line)
            shown = line
        if found.state in _TERMINAL:
            return found
        await asyncio.sleep(POLL)
        request = pb.GetTrainingSetRequest(training_set_id=found.training_set_id)
        reply: pb.GetTrainingSetResponse = await call(stub.GetTrainingSet(request), "progress")
        found = reply.training_set
