"""A second process that runs migrations, for the concurrent-migration test.

Usage: ``python migrations_peer.py SCHEMA PACKAGE [SYS_PATH]``. Connects, prints
``ready``, waits for a line on stdin (so two peers start migrating together),
migrates, and prints the labels it applied as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys

from strata.core.migrations import migrate
from strata.core.postgres import create_pool
from strata.core.settings import PostgresSettings, load


async def main(schema: str, package: str) -> None:
    pool = await create_pool(load(PostgresSettings))
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        applied = await migrate(pool, schema, package)
        print(json.dumps(applied), flush=True)
    finally:
        await pool.close()


if __name__ == "__main__":
    if len(sys.argv) > 3:
        sys.path.insert(0, sys.argv[3])
    asyncio.run(main(sys.argv[1], sys.argv[2]))
