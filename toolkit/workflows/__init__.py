"""The application layer: what the toolkit's own domain does with its infrastructure.

:mod:`~toolkit.workflows.service` starts and finishes executions (with their
outbox messages and audit events in one transaction), runs long work under a
lease and sweeps expired leases; :mod:`~toolkit.workflows.handlers` are the
worker's handlers for the three queues (``toolkit relay`` and ``toolkit
worker`` are :mod:`toolkit.commands.messaging`); the demos walk the story.
``messaging/``, ``storage/`` and ``db/`` never import this package.
"""
