"""LangGraph's own conformance suite (langgraph-checkpoint-conformance) against our saver.

Every capability runs twice on a fresh database: through the async methods
(psycopg's async pool), and through the sync methods (the suite is async,
so a thin subclass calls each sync method in a worker thread). Both must
pass every test of every capability, base and extended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

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
from toolkit.integrations.langgraph import ToolkitCheckpointSaver

from .conftest import TALLY


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

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)


CAPABILITIES = sorted(c.value for c in BASE_CAPABILITIES | EXTENDED_CAPABILITIES)
DRIVERS = {"async": ToolkitCheckpointSaver, "sync": SyncDriven}


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

    report = asyncio.run(validate(factory, capabilities={capability}))
    result = report.results[capability]
    kind = "base" if capability in {c.value for c in BASE_CAPABILITIES} else "extended"
    TALLY.add(f"langgraph-checkpoint-conformance {kind} ({driver})", *_counts(result))
    assert result.detected, f"{capability} not detected"
    assert result.passed, "\n".join(result.failures)
    assert result.tests_passed > 0


def _counts(result: Any) -> Iterator[int]:
    yield result.tests_passed
    yield result.tests_failed
