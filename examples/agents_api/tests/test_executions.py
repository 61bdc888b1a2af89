"""Starting an execution: 202, the execution and its message committed together."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from toolkit.config import Settings
from toolkit.db import Database
from toolkit.messaging import Relay, Topology
from toolkit.messaging.connection import close_quietly, connect
from toolkit.messaging.topology import declare, delete

pytestmark = pytest.mark.asyncio


def outbox_rows(db: Database) -> list[tuple[str, dict[str, str]]]:
    with db.connection() as conn:
        return [(q, b) for q, b in conn.execute("SELECT queue, body FROM outbox ORDER BY seq")]


@pytest.fixture
def topology(settings: Settings) -> Iterator[Topology]:
    """``workflow.execute`` under this test's queue prefix; deleted afterwards."""
    topo = Topology(prefix=settings.queue_prefix, queues=("workflow.execute",), retry_delays=(1,))
    connection = connect(settings.amqp_url)
    try:
        declare(connection, topo)
        yield topo
        delete(connection, topo)
    finally:
        close_quietly(connection)


async def test_start_is_202_with_the_pending_execution_and_its_message(
    client: httpx.AsyncClient, workflow_id: str, toolkit_db: Database
) -> None:
    response = await client.post(
        "/executions", json={"workflow_id": workflow_id, "input": {"topic": "otters"}}
    )
    assert response.status_code == 202, response.text
    execution = response.json()
    assert execution["status"] == "pending" and execution["input"] == {"topic": "otters"}
    assert response.headers["location"] == f"/executions/{execution['id']}"
    assert (await client.get(response.headers["location"])).json() == execution
    [(queue, body)] = outbox_rows(toolkit_db)
    assert queue == "workflow.execute"
    assert body["execution_id"] == execution["id"] and body["workflow_id"] == workflow_id


async def test_an_unknown_workflow_is_422_and_leaves_no_message(
    client: httpx.AsyncClient, toolkit_db: Database
) -> None:
    response = await client.post("/executions", json={"workflow_id": str(uuid.uuid4())})
    assert response.status_code == 422, response.text
    assert outbox_rows(toolkit_db) == []


async def test_bad_input_is_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/executions", json={"workflow_id": "nope"})
    assert response.status_code == 422 and response.json()["field"] == "workflow_id"


async def test_the_relay_publishes_the_started_execution_to_rabbitmq(
    client: httpx.AsyncClient,
    workflow_id: str,
    toolkit_db: Database,
    settings: Settings,
    topology: Topology,
) -> None:
    response = await client.post("/executions", json={"workflow_id": workflow_id})
    assert response.status_code == 202
    with Relay(toolkit_db, settings.amqp_url, topology, listen=False) as relay:
        assert relay.drain(timeout=10) == 1
    connection = connect(settings.amqp_url)
    try:
        channel = connection.channel()
        deadline = time.monotonic() + 10
        while (got := channel.basic_get(topology.queue_name("workflow.execute"), True))[0] is None:
            assert time.monotonic() < deadline, "the message never reached the queue"
            connection.process_data_events(time_limit=0.05)
        assert json.loads(got[2])["execution_id"] == response.json()["id"]
    finally:
        close_quietly(connection)
