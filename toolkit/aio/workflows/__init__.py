"""The application layer, async: :mod:`toolkit.aio.workflows.service`.

The same functions as :mod:`toolkit.workflows.service`, taking an
``AsyncConnection`` (or an ``AsyncDatabase``), awaited; its
``workflow_handler`` is an async worker handler.
"""
