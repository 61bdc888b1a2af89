# Generated from toolkit/aio/leases.py by tools/async_to_sync.py: do not edit.
# Edit the async source and run `tox -e generate`.
"""The one lease keeper: renews a lease in the background while its holder works.

Used by the LLM cache's stampede lease, the workflow service's execution
lease and the worker's periodic jobs, on :func:`~toolkit.concurrency.spawn`
and :func:`~toolkit.concurrency.stop` (a task here, a thread in the
generated sync twin).
"""

from __future__ import annotations

from collections.abc import Callable

from toolkit.concurrency import Stopping, Worker, spawn, stop

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    """Renews a lease in the background while its holder works.

    Every ``every`` seconds it runs ``renew()``, which renews the lease and
    returns False once the lease is no longer ours (``renew`` handles its own
    transient failures: it logs them and returns True to try again next
    time). It ends when stopped or when the lease is lost, and then
    :attr:`lost` says which. It runs as a :func:`spawn` worker named
    ``name``; :meth:`stop` waits up to ``stop_timeout`` seconds for a
    renewal in flight. Use :meth:`start` and :meth:`stop`, or the keeper as a context manager.
    """

    def __init__(
        self,
        renew: Callable[[], bool],
        every: float,
        *,
        name: str,
        stop_timeout: float = 10.0,
    ) -> None:
        self._renew = renew
        self._every = every
        self._name = name
        self._stop_timeout = stop_timeout
        self._worker: Worker | None = None
        self.lost = False
        """True once ``renew`` reported the lease lost."""
        self.renewals = 0
        """How many renewals succeeded."""

    def start(self) -> None:
        """Begin renewing in the background."""
        self._worker = spawn(self._run, name=self._name)

    def stop(self) -> None:
        """Stop renewing and wait for the keeper to end (a no-op if never started)."""
        if self._worker is not None:
            stop(self._worker, self._stop_timeout)

    def __enter__(self) -> LeaseKeeper:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, stopping: Stopping) -> None:
        while not stopping.wait(self._every):
            if not self._renew():
                self.lost = True
                return
            if stopping.is_set():
                return  # stopped while renewing: this renewal is not counted
            self.renewals += 1
