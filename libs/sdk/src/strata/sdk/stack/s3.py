"""S3 for the stack: moto's S3 server, objects in memory.

Why moto and not S3Proxy is in ``deploy/local/README.md``: already locked, a Python
process instead of a second JVM, and faithful in the S3 features Strata uses. It
runs on this interpreter (``sys.executable -m moto.server``), so the venv that runs
``strata stack`` is the one that has moto.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

import strata.core.blobs
from strata.core.reachability import probe
from strata.core.settings import BlobSettings
from strata.sdk.stack.server import Listener, Server

if TYPE_CHECKING:
    from aiobotocore.session import ClientCreatorContext
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType


class S3(Server):
    """moto's S3 server (objects in memory; see deploy/local/README.md for why moto)."""

    name = "s3"
    programs = ("python",)
    main_argument = "moto.server"

    def __init__(self, home: Path, settings: BlobSettings) -> None:
        super().__init__(home)
        self.settings = settings.model_copy(update={"backend": "s3"})
        # One session for every client: a new session parses botocore's S3 model again,
        # which blocks the event loop that waits for the other servers.
        self.session = aioboto3.Session()

    @property
    def address(self) -> str:
        return f"{self.settings.s3_host}:{self.settings.s3_port}"

    def listeners(self) -> list[Listener]:
        return [Listener(self.settings.s3_host, self.settings.s3_port, "STRATA_BLOB_S3_PORT")]

    def command(self) -> list[str]:
        host, port = self.settings.s3_host, str(self.settings.s3_port)
        return [sys.executable, "-m", "moto.server", "-H", host, "-p", port]

    def client(self, seconds: float = 5.0) -> ClientCreatorContext[S3Client]:
        """An S3 client that fails fast: the waits retry, the client must not."""
        return self.session.client(
            "s3",
            endpoint_url=self.settings.endpoint_url,
            region_name=self.settings.s3_region,
            aws_access_key_id=self.settings.s3_access_key.get_secret_value(),
            aws_secret_access_key=self.settings.s3_secret_key.get_secret_value(),
            config=AioConfig(
                connect_timeout=seconds,
                read_timeout=seconds,
                retries={"mode": "standard", "total_max_attempts": 1},
            ),
        )

    async def ping(self, seconds: float) -> None:
        await strata.core.blobs.ping(self.settings, seconds)

    async def ping_bootstrap(self, seconds: float) -> None:
        """List the buckets: answers before the services' bucket exists."""

        async def list_buckets() -> None:
            async with self.client(seconds) as s3:
                await s3.list_buckets()

        failures = (BotoCoreError, ClientError, OSError)
        await probe("S3", self.settings.endpoint_url, list_buckets, seconds, failures)

    async def provision(self) -> None:
        """Create the services' bucket unless it exists."""
        async with self.client() as s3:
            buckets = (await s3.list_buckets()).get("Buckets", [])
            if any(bucket.get("Name") == self.settings.bucket for bucket in buckets):
                return
            if self.settings.s3_region == "us-east-1":  # the one region S3 takes no location for
                await s3.create_bucket(Bucket=self.settings.bucket)
            else:
                region = cast("BucketLocationConstraintType", self.settings.s3_region)
                await s3.create_bucket(
                    Bucket=self.settings.bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},
                )
