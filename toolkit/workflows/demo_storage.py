"""The storage step of ``toolkit demo``: store an execution's report and read it back."""

from __future__ import annotations

import json
from uuid import UUID

from toolkit.config import Settings
from toolkit.db.database import Database
from toolkit.repositories import executions, workflows
from toolkit.storage.backends import LocalStorage, open_storage
from toolkit.storage.filestore import FileStore


def store_demo_report(database: Database, settings: Settings, execution_id: UUID | str) -> str:
    """Store the execution's generated report, linked to it, and read it back checked.

    The report (markdown) goes through the whole protocol: staged, recorded
    in a transaction, promoted, then read back with its SHA-256 verified.
    Returns one printable line describing what was stored and where: for a
    local folder (the default ``file://./toolkit-files`` included) its
    absolute path, so a first run does not leave a folder behind unannounced.
    """
    with database.connection() as conn:
        execution = executions.get(conn, execution_id)
        workflow = workflows.get(conn, execution.workflow_id)
    report = "\n".join(
        [
            f"# Report of execution {execution.id}",
            "",
            f"- workflow: {workflow.name}",
            f"- status: {execution.status}",
            "",
            "```json",
            json.dumps(execution.output or {}, indent=2, sort_keys=True),
            "```",
            "",
        ]
    ).encode()
    with open_storage(settings.storage_url) as storage:
        store = FileStore(storage)
        stored = store.store(
            database,
            report,
            owner_id=workflow.owner_id,
            purpose="generated",
            original_name="report.md",
            claimed_type="text/markdown",
            execution_id=execution.id,
        )
        data = store.read(stored, verify=True)
        where = (
            f"the folder {storage.root} (TOOLKIT_STORAGE_URL)"
            if isinstance(storage, LocalStorage)
            else "the store TOOLKIT_STORAGE_URL names"
        )
    if data != report:  # pragma: no cover - read() already verified the SHA-256
        raise AssertionError("the stored report differs from what was written")
    return (
        f"report stored in {where} at {stored.key} "
        f"({stored.size} bytes, {stored.content_type}, "
        f"sha256 {stored.sha256[:12]}...) linked to execution {execution.id}; "
        "read back, checksum ok"
    )
