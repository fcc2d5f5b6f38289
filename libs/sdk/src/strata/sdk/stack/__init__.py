"""The local stack: real Kafka, Postgres, Redis and S3 servers on loopback ports.

``strata stack up|down|status`` (``make stack-up`` and friends) runs it. Ports, heap
and the stack's home folder come from :mod:`strata.core.settings`, so ``STRATA_*``
variables move a whole stack elsewhere (the integration tests run a second stack
that way). Each server keeps its data, log and pid file in ``<home>/<server>/`` and
runs as a plain background process in its own session: no Docker, nothing installed
outside the project's own ``make setup``.

``up`` is idempotent: a server that runs is left alone, one that crashed is started
again, and a port held by a process that is not ours stops everything before
anything starts. ``down`` stops each server gracefully, then makes sure no process
of the stack is left.

Where things are: :mod:`.processes` (what ``/proc`` says about a pid, stopping one),
:mod:`.server` (what every server shares), one module per server (:mod:`.kafka`,
:mod:`.postgres`, :mod:`.redis`, :mod:`.s3`), and :mod:`.commands` (``up``, ``down``,
``status`` over all four, and the lock that makes two of them take turns).
"""
