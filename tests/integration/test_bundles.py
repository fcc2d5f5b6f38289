"""``strata workflow apply`` stores the project as a content-addressed bundle in the real S3.

A real ``python -m strata.scheduler`` and the CLI as a user runs it. What users rely
on: the applied workflow carries the bundle of the workflow file's folder (its sha256
and where it is); applying the same code again uploads nothing (shown by the store:
an object put in the bundle's place survives the second apply); changed code is a new
bundle, stored beside the old one, and a new version of the workflow.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import uuid
from pathlib import Path

import grpc
import pytest
from service_processes import ServiceProcess, running

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.blobs import open_blob_store
from strata.core.bundles import bundle_key
from strata.core.settings import BlobSettings
from strata.sdk.workflows.bundle import pack
from tests.stack_session import STRATA

pytestmark = pytest.mark.integration

ADMIN = (("authorization", "Bearer dev-admin-token"),)
S3 = BlobSettings(backend="s3")
WORKFLOW = """
from helpers import ROWS
from strata.sdk.workflows import Workflow

flow = Workflow("{name}")


@flow.task()
def count():
    return {{"rows": ROWS}}
"""


def _apply(file: Path, scheduler: ServiceProcess) -> None:
    """``strata workflow apply FILE`` in the file's folder, with the blob store in S3."""
    applied = subprocess.run(
        [STRATA, "workflow", "apply", file.name],
        cwd=file.parent,
        env={
            **os.environ,
            "STRATA_SERVICE_SCHEDULER_PORT": scheduler.address.rsplit(":", 1)[1],
            "STRATA_BLOB_BACKEND": "s3",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr


async def _applied(scheduler: ServiceProcess, name: str) -> pb.Workflow:
    async with grpc.aio.insecure_channel(scheduler.address) as channel:
        reply = await SchedulerServiceStub(channel).GetWorkflow(
            pb.GetWorkflowRequest(name=name), metadata=ADMIN
        )
    workflow: pb.Workflow = reply.workflow
    return workflow


async def test_applying_the_same_code_twice_uploads_it_once_and_changed_code_again(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    (project / "__pycache__").mkdir(parents=True)
    name = f"bundled-{uuid.uuid4().hex[:8]}"
    file = project / f"bundled_{name[-8:]}.py"
    file.write_text(textwrap.dedent(WORKFLOW.format(name=name)))
    (project / "helpers.py").write_text(f"ROWS = 120  # {name}\n")
    packed = pack(project)

    async with running("scheduler", tmp_path) as scheduler:
        _apply(file, scheduler)
        first = await _applied(scheduler, name)
        key = bundle_key(packed.sha256)
        assert first.spec.bundle.sha256 == packed.sha256
        assert first.spec.bundle.uri == f"s3://{S3.bucket}/{key}"
        async with open_blob_store(S3) as blobs:
            assert await blobs.get(key) == packed.archive
            # What a second upload of the same bundle would overwrite.
            await blobs.put(key, b"left in place")

            _apply(file, scheduler)
            assert await blobs.get(key) == b"left in place"
            again = await _applied(scheduler, name)
            assert again.version == first.version

            (project / "helpers.py").write_text(f"ROWS = 121  # {name}\n")
            changed = pack(project)
            _apply(file, scheduler)
            newer = await _applied(scheduler, name)
            assert newer.spec.bundle.sha256 == changed.sha256 != packed.sha256
            assert newer.version == first.version + 1
            assert await blobs.get(bundle_key(changed.sha256)) == changed.archive
