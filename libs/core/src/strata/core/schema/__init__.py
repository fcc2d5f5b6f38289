"""The tables every service schema has, owned by the core: the outbox and the inbox.

:func:`strata.core.migrations.migrate_service` applies these files to a service's
schema before the service's own migrations, with their own history table, so a
change to the outbox reaches every service by a core release instead of six copies.
"""
