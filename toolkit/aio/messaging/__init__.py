"""Messaging, async: the outbox and the inbox, awaited.

The same functions as :mod:`toolkit.messaging.outbox` and
:mod:`toolkit.messaging.inbox`, taking an ``AsyncConnection`` (or an async
transaction) first::

    from toolkit.aio.messaging import outbox

    async with db.transaction() as tx:
        ...  # the change
        await outbox.enqueue(tx, AuditLog(action="workflow.viewed", entity="workflow"))

Everything else (models, topology, publishers, the relay and the worker) is
shared with :mod:`toolkit.messaging`: the relay and the worker are processes
of their own, and a worker's handler may be a coroutine function
(:data:`~toolkit.messaging.consumer.AsyncHandler`), run on the worker's
event loop.
"""

from toolkit.aio.messaging import inbox, outbox

__all__ = ["inbox", "outbox"]
