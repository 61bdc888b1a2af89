"""Run one behavioural test against the sync API and the async API.

A test module opts in with ``pytestmark = pytest.mark.usefixtures("mode")``:
each of its tests then runs twice, ``[sync]`` and ``[async]``. Its module
names come from :func:`both`::

    agents = both("toolkit.repositories.agents")

    def test_get(conn):               # conn: a Connection, or an AsyncConnection
        agent = agents.get(conn, id)  # toolkit.repositories.agents.get, or
                                      # toolkit.aio.repositories.agents.get, awaited

In the async run every call goes to the ``toolkit.aio`` twin and is run to
completion on the test's own event loop, so the test body reads the same.
Objects of async classes (``AsyncDatabase``, ``AsyncLLMCache``, ...) come
back wrapped: their coroutines are awaited, their async context managers
and iterators used as sync ones; plain functions passed to them (a
``compute`` callback) become coroutine functions. This is only a test
harness: concurrency tests are written per mode, by hand.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class _State:
    current: Mode | None = None


class Mode:
    """Which API a test run uses, and for async the event loop its calls run on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_async = name == "async"
        self.loop = asyncio.new_event_loop() if self.is_async else None

    def run(self, value: Any) -> Any:
        """``value``, awaited to completion when it is awaitable."""
        if inspect.isawaitable(value):
            assert self.loop is not None, "an awaitable in a sync run"
            return self.loop.run_until_complete(value)
        return value

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def __repr__(self) -> str:
        return self.name


@contextmanager
def running(mode: Mode) -> Iterator[Mode]:
    """Make ``mode`` the one :func:`both` dispatches to, for one test."""
    previous, _State.current = _State.current, mode
    try:
        yield mode
    finally:
        _State.current = previous
        mode.close()


def _async_name(module: str) -> str:
    return "toolkit.aio." + module.removeprefix("toolkit.")


def _as_coroutine_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return await result
        return result

    return call


def _adapt_arg(value: Any) -> Any:
    if isinstance(value, Synced):
        return value.target  # a wrapped AsyncDatabase passed back into the async API
    if isinstance(value, (types.FunctionType, functools.partial)) and not (
        inspect.iscoroutinefunction(value)
    ):
        return _as_coroutine_function(value)
    return value


def _is_async_object(value: Any) -> bool:
    """An object of the toolkit's async API: its class has coroutine methods."""
    cls = type(value)
    if not cls.__module__.startswith("toolkit."):
        return False
    return cls.__module__.startswith("toolkit.aio.") or any(
        inspect.iscoroutinefunction(getattr(cls, name, None)) for name in dir(cls)
    )


class _SyncContext:
    def __init__(self, manager: Any, mode: Mode) -> None:
        self._manager = manager
        self._mode = mode

    def __enter__(self) -> Any:
        return _entered(self._mode.run(self._manager.__aenter__()), self._mode)

    def __exit__(self, *exc_info: Any) -> Any:
        return self._mode.run(self._manager.__aexit__(*exc_info))


def _entered(value: Any, mode: Mode) -> Any:
    """What ``with`` binds: an AsyncConnection stays itself (tests pass it back in)."""
    return Synced(value, mode) if _is_async_object(value) else value


def _iterate(iterator: Any, mode: Mode) -> Iterator[Any]:
    while True:
        try:
            item = mode.run(iterator.__anext__())
        except StopAsyncIteration:
            return
        yield synced(item, mode)


def synced(value: Any, mode: Mode) -> Any:
    """What a sync caller should see for a value the async API returned."""
    if inspect.isawaitable(value):
        return synced(mode.run(value), mode)
    if _is_async_object(value):
        return Synced(value, mode)
    if hasattr(value, "__aenter__") and not hasattr(value, "__enter__"):
        return _SyncContext(value, mode)
    if hasattr(value, "__anext__"):
        return _iterate(value, mode)
    return value


def _call(fn: Callable[..., Any], mode: Mode) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_adapt_arg(a) for a in args)
        kwargs = {k: _adapt_arg(v) for k, v in kwargs.items()}
        return synced(fn(*args, **kwargs), mode)

    return call


class Synced:
    """An object of the async API, used through sync calls."""

    def __init__(self, target: Any, mode: Mode) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_mode", mode)

    @property
    def target(self) -> Any:
        """The async object itself."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value) and not isinstance(value, type):
            return _call(value, self._mode)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def __enter__(self) -> Any:
        return _entered(self._mode.run(self._target.__aenter__()), self._mode)

    def __exit__(self, *exc_info: Any) -> Any:
        return self._mode.run(self._target.__aexit__(*exc_info))

    def __repr__(self) -> str:
        return repr(self._target)


class _SyncClass:
    """An async class used through sync calls: constructors and classmethods alike."""

    def __init__(self, cls: type, mode: Mode) -> None:
        self._cls = cls
        self._mode = mode

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call(self._cls, self._mode)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cls, name)
        if callable(value) and not isinstance(value, type):
            return _call(value, self._mode)
        return value


class _Both(types.ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._sync_name = name

    def _module(self) -> tuple[types.ModuleType, Mode | None]:
        mode = _State.current
        if mode is None or not mode.is_async:
            return importlib.import_module(self._sync_name), None
        return importlib.import_module(_async_name(self._sync_name)), mode

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        module, mode = self._module()
        if mode is not None and not hasattr(module, name) and hasattr(module, f"Async{name}"):
            name = f"Async{name}"  # Database -> AsyncDatabase, FileStore -> AsyncFileStore
        value = getattr(module, name)
        if mode is None:
            return value
        if isinstance(value, type):
            if value.__module__.startswith("toolkit.aio."):
                return _SyncClass(value, mode)
            return value
        if callable(value) and inspect.iscoroutinefunction(value):
            return _call(value, mode)
        if callable(value) and (getattr(value, "__module__", "") or "").startswith("toolkit.aio."):
            return _call(value, mode)
        return value


def execute(conn: Any, query: str, params: Any = None) -> Any:
    """``conn.execute(query, params)`` on a sync or an async connection; the cursor."""
    if isinstance(conn, Synced):
        conn = conn.target
    result = conn.execute(query, params)
    if inspect.isawaitable(result):
        mode = _State.current
        assert mode is not None and mode.loop is not None, "an async connection in a sync run"
        return mode.loop.run_until_complete(result)
    return result


def fetchone(conn: Any, query: str, params: Any = None) -> Any:
    """The first row of ``query`` on a sync or an async connection."""
    return _current_run(execute(conn, query, params).fetchone())


def _current_run(value: Any) -> Any:
    mode = _State.current
    return mode.run(value) if mode is not None else value


def both(module: str) -> Any:
    """``module`` (a sync module's name) in whichever API the running test uses."""
    return _Both(module)
