"""LangGraph's own conformance suite (langgraph-checkpoint-conformance) against our saver.

Every capability runs twice on a fresh database: through the async methods
(psycopg's async pool), and through the sync methods (the suite is async,
so a thin subclass calls each sync method in a worker thread). Both must
pass every test of every capability, base and extended.

Then both run again as the application role (which row-level security
binds) with a tenant in every call. The suite makes its own configs and
has no way to add ``configurable`` values, so a thin subclass adds the
tenant to each config (and passes ``tenant=`` to the thread-id methods) on
the way in; everything else, returned configs included, is the saver's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    BASE_CAPABILITIES,
    EXTENDED_CAPABILITIES,
)

from toolkit.config import Settings
from toolkit.integrations.langgraph import TENANT_KEY, RetentionReport, ToolkitCheckpointSaver

from .conftest import TALLY, TENANT_A, app_login

Tenant = UUID | str | None


class SyncDriven(ToolkitCheckpointSaver):
    """The saver with each async method answered by its sync twin, in a thread."""

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        def listed() -> list[CheckpointTuple]:
            return list(self.list(config, filter=filter, before=before, limit=limit))

        for item in await asyncio.to_thread(listed):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str, *, tenant: Tenant = None) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id, tenant=tenant)

    async def adelete_for_runs(self, run_ids: Sequence[str], *, tenant: Tenant = None) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids, tenant=tenant)

    async def acopy_thread(
        self, source_thread_id: str, target_thread_id: str, *, tenant: Tenant = None
    ) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id, tenant=tenant)

    async def aprune(
        self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", tenant: Tenant = None
    ) -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy, tenant=tenant)

    async def aretain(
        self,
        *,
        keep_last: int | None = None,
        idle_for: timedelta | None = None,
        thread_ids: Sequence[str] | None = None,
        tenant: Tenant = None,
    ) -> RetentionReport:
        return await asyncio.to_thread(
            self.retain,
            keep_last=keep_last,
            idle_for=idle_for,
            thread_ids=thread_ids,
            tenant=tenant,
        )


def as_tenant_a(config: RunnableConfig | None) -> RunnableConfig:
    """``config`` (None: an empty one) naming TENANT_A as its tenant."""
    given = config or {}
    return {**given, "configurable": {**(given.get("configurable") or {}), TENANT_KEY: TENANT_A}}


class AsTenantA(ToolkitCheckpointSaver):
    """The saver with TENANT_A added to every call's config or ``tenant=`` argument."""

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await super().aget_tuple(as_tenant_a(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        listed = super().alist(as_tenant_a(config), filter=filter, before=before, limit=limit)
        async for item in listed:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await super().aput(as_tenant_a(config), checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await super().aput_writes(as_tenant_a(config), writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str, *, tenant: Tenant = None) -> None:
        await super().adelete_thread(thread_id, tenant=TENANT_A)

    async def adelete_for_runs(self, run_ids: Sequence[str], *, tenant: Tenant = None) -> None:
        await super().adelete_for_runs(run_ids, tenant=TENANT_A)

    async def acopy_thread(
        self, source_thread_id: str, target_thread_id: str, *, tenant: Tenant = None
    ) -> None:
        await super().acopy_thread(source_thread_id, target_thread_id, tenant=TENANT_A)

    async def aprune(
        self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", tenant: Tenant = None
    ) -> None:
        await super().aprune(thread_ids, strategy=strategy, tenant=TENANT_A)


class SyncDrivenAsTenantA(AsTenantA, SyncDriven):
    """The sync methods (in worker threads), with TENANT_A added to every call."""


CAPABILITIES = sorted(c.value for c in BASE_CAPABILITIES | EXTENDED_CAPABILITIES)
DRIVERS = {"async": ToolkitCheckpointSaver, "sync": SyncDriven}
TENANT_DRIVERS = {"async": AsTenantA, "sync": SyncDrivenAsTenantA}


@pytest.fixture(scope="session")
def app_shared_settings(shared_settings: Settings) -> Iterator[Settings]:
    """The shared database as the application role, with TENANT_A's row."""
    with app_login(shared_settings.database_url, [TENANT_A]) as settings:
        yield settings


def test_every_capability_is_detected() -> None:
    """The suite finds all eight capabilities overridden, in both drivers."""
    from langgraph.checkpoint.conformance.capabilities import DetectedCapabilities

    for saver_type in DRIVERS.values():
        saver = object.__new__(saver_type)
        assert not DetectedCapabilities.from_instance(saver).missing


@pytest.mark.parametrize("driver", sorted(DRIVERS))
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_conformance(shared_settings: Settings, driver: str, capability: str) -> None:
    saver_type = DRIVERS[driver]

    @checkpointer_test(name=f"ToolkitCheckpointSaver[{driver}]")
    async def factory() -> AsyncIterator[ToolkitCheckpointSaver]:
        async with saver_type.from_settings(shared_settings) as saver:
            yield saver

    _validate(factory, capability, driver)


@pytest.mark.parametrize("driver", sorted(TENANT_DRIVERS))
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_conformance_as_a_tenant_on_the_application_role(
    app_shared_settings: Settings, driver: str, capability: str
) -> None:
    saver_type = TENANT_DRIVERS[driver]

    @checkpointer_test(name=f"ToolkitCheckpointSaver[{driver}, tenant]")
    async def factory() -> AsyncIterator[ToolkitCheckpointSaver]:
        async with saver_type.from_settings(app_shared_settings) as saver:
            yield saver

    _validate(factory, capability, f"{driver}, application role with a tenant")


def _validate(factory: Any, capability: str, label: str) -> None:
    """Run one capability's conformance tests; fail with their failures."""
    report = asyncio.run(validate(factory, capabilities={capability}))
    result = report.results[capability]
    kind = "base" if capability in {c.value for c in BASE_CAPABILITIES} else "extended"
    TALLY.add(f"langgraph-checkpoint-conformance {kind} ({label})", *_counts(result))
    assert result.detected, f"{capability} not detected"
    assert result.passed, "\n".join(result.failures)
    assert result.tests_passed > 0


def _counts(result: Any) -> Iterator[int]:
    yield result.tests_passed
    yield result.tests_failed
