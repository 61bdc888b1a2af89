"""The async API: the same modules, names and signatures as the sync one, awaited.

``toolkit.aio.X`` mirrors ``toolkit.X`` for every I/O-facing module::

    from toolkit.aio.db import AsyncDatabase
    from toolkit.aio.repositories import agents

    async with AsyncDatabase() as db, db.connection() as conn:
        agent = await agents.get(conn, agent_id)

The async modules are the source: each sync module with the same path under
``toolkit/`` is generated from its async twin by ``tools/async_to_sync.py``
(``tox -e generate``; ``tox -e lint`` fails when one is stale), so the two
APIs cannot drift apart.
"""
