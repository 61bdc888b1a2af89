"""Every command and option the README documents, run as the installed console script.

The wheel is installed in a fresh virtualenv (the session fixtures of
tests/conftest.py); each command runs as a subprocess of that virtualenv's
``toolkit`` script, from a folder with no checkout in it, with a database,
a queue prefix and a storage folder of this module's own, all removed
afterwards. No command may print a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, server_url
from tests.messaging.conftest import AMQP_URL
from toolkit.messaging import inbox, outbox
from toolkit.messaging.connection import close_quietly, connect
from toolkit.messaging.models import AuditLog
from toolkit.messaging.topology import Topology, delete
from toolkit.repositories import audit_events, executions, users, workflows
from toolkit.storage.keys import STAGING_PREFIX
from toolkit.workflows import service

pytestmark = pytest.mark.packaging

STARTUP_TIMEOUT = 90.0
"""Seconds a long-running command gets to show it works (quorum queues are slow to declare)."""
WORKER_CONSUMER = "toolkit-worker"
"""The inbox consumer name of ``toolkit worker``'s default handlers."""
MIGRATION_IDS = sorted(
    path.name.removesuffix(".sql")
    for path in (ROOT / "migrations").glob("*.sql")
    if not path.name.endswith(".rollback.sql")
)


@dataclass
class Cli:
    """The installed ``toolkit`` script with this module's environment."""

    script: Path
    cwd: Path
    env: dict[str, str]
    dbname: str
    database_url: str
    storage: Path
    prefix: str
    first_migrate: subprocess.CompletedProcess[str] | None = None

    def run(
        self, *args: str, expect: int = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``toolkit ARGS`` to completion; check its exit code and that nothing crashed."""
        done = subprocess.run(
            [str(self.script), *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == expect, f"toolkit {args}: {done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"toolkit {args}: {done.stderr}"
        return done

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``toolkit ARGS`` in the background; its output goes to files (no pipe fills)."""
        name = "-".join(args)
        return subprocess.Popen(
            [str(self.script), *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            stdout=(self.cwd / f"{name}.out").open("w"),
            stderr=(self.cwd / f"{name}.err").open("w"),
            text=True,
        )

    def stop(self, process: subprocess.Popen[str], *args: str) -> tuple[str, str]:
        """SIGTERM a started command; check it exits 0 without a traceback; its output."""
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        name = "-".join(args)
        out = (self.cwd / f"{name}.out").read_text()
        err = (self.cwd / f"{name}.err").read_text()
        assert code == 0, f"toolkit {args} exited {code} on SIGTERM: {out}\n{err}"
        assert "Traceback" not in err, err
        return out, err


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    """Poll ``condition`` while ``process`` runs; fail if it exits or time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not condition():
        assert process.poll() is None, f"exited {process.returncode} before {what}"
        assert time.monotonic() < deadline, f"not {what} within {STARTUP_TIMEOUT:.0f}s"
        time.sleep(0.2)


def subprocess_environment(**settings: str) -> dict[str, str]:
    """This process's environment without its TOOLKIT_* settings or Python path, plus these."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TOOLKIT_") and key not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    return {**inherited, **{f"TOOLKIT_{key.upper()}": value for key, value in settings.items()}}


@pytest.fixture(scope="module")
def cli(installed_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """The installed script, run away from the checkout, against a database not yet created."""
    away = tmp_path_factory.mktemp("away-from-checkout")
    assert ROOT not in away.parents and not (away / "toolkit").exists()
    storage = away / "files"
    storage.mkdir()
    dbname = f"toolkit_cli_{uuid.uuid4().hex[:8]}"
    prefix = f"cli{uuid.uuid4().hex[:8]}-"
    env = subprocess_environment(
        database_url=server_url(dbname),
        amqp_url=AMQP_URL,
        queue_prefix=prefix,
        storage_url=f"file://{storage}",
    )
    script = installed_venv / "bin" / "toolkit"
    tool = Cli(script, away, env, dbname, server_url(dbname), storage, prefix)
    try:
        # The first migrate creates the database; test_migrate_... checks what it printed.
        tool.first_migrate = tool.run("migrate")
        yield tool
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        broker = connect(AMQP_URL)
        try:
            delete(broker, Topology(prefix=prefix))
        finally:
            close_quietly(broker)


def documented_commands() -> list[tuple[list[str], list[str]]]:
    """(words, options) of each ``toolkit ...`` in the README's table of the command."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The `toolkit` command", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    found = []
    for snippet in re.findall(r"`toolkit ([^`]*)`", table):
        tokens = re.sub(r"[\[\]|]", " ", snippet).split()
        words = [token for token in tokens if re.fullmatch(r"[a-z]+", token)]
        options = [token for token in tokens if token.startswith("--")]
        found.append((words, options))
    return found


def test_help_shows_every_documented_command_and_option(cli: Cli) -> None:
    documented = documented_commands()
    assert documented, "the README's table of the toolkit command was not found"
    top = cli.run("--help").stdout
    listed = set(re.findall(r"^ {4}([a-z]+) ", top, flags=re.MULTILINE))
    assert listed == {words[0] for words, _ in documented}, "README table vs toolkit --help"
    for words, options in documented:
        # The longest prefix of the words that is a (sub)command; the rest are its arguments.
        path = list(words)
        while True:
            shown = cli.run(*path, "--help").stdout
            if shown.startswith(f"usage: toolkit {' '.join(path)} "):
                break
            path.pop()
            assert path, f"no help for toolkit {words}"
        for needed in [*words[len(path) :], *options]:
            assert needed in shown, f"toolkit {' '.join(path)} --help does not mention {needed}"


def test_help_starts_plainly_and_states_the_exit_codes(cli: Cli) -> None:
    top = cli.run("--help").stdout
    description = top.split("\n\n")[1]
    assert description.startswith("Migrate, inspect and run the agent persistence toolkit")
    assert "``" not in top and ":class:" not in top
    assert "exit codes: 0 success" in " ".join(top.split())


def test_usage_errors_exit_2_and_runtime_failures_exit_1(cli: Cli) -> None:
    unknown = cli.run("migrate", "--no-such-option", expect=2)
    assert "unrecognized arguments: --no-such-option" in unknown.stderr
    assert "at least 1" in cli.run("rollback", "--count", "0", expect=2).stderr
    nowhere = {"TOOLKIT_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    for command in (["migrate"], ["verify"], ["relay", "--once"]):
        failed = cli.run(*command, expect=1, env=nowhere)
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and "127.0.0.1:1" in lines[0], (command, failed.stderr)


def test_a_failing_migration_exits_1_naming_its_file(cli: Cli, own_database: str) -> None:
    folder = cli.cwd / f"app-migrations-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "app-0001.fine.sql").write_text("CREATE TABLE app_fine (id int);\n")
    broken = folder / "app-0002.broken.sql"
    broken.write_text("CREAT TABLE app_typo (id int);\n")
    env = {"TOOLKIT_DATABASE_URL": own_database, "TOOLKIT_MIGRATIONS_PATH": str(folder)}
    failed = cli.run("migrate", expect=1, env=env)
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and f"migration app-0002.broken ({broken}) failed" in lines[0], lines
    assert app_tables(own_database) == {"app_fine"}


def test_an_unknown_depends_id_exits_2_naming_it_and_its_file(cli: Cli, own_database: str) -> None:
    folder = cli.cwd / f"app-migrations-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    needy = folder / "app-0001.needy.sql"
    needy.write_text("-- depends: app-0000.missing\nCREATE TABLE app_needy (id int);\n")
    env = {"TOOLKIT_DATABASE_URL": own_database, "TOOLKIT_MIGRATIONS_PATH": str(folder)}
    refused = cli.run("migrate", expect=2, env=env)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and str(needy) in lines[0] and "'app-0000.missing'" in lines[0], lines


def migration_lines(output: str, verb: str) -> list[str]:
    """The migration ids ending the lines that start with ``verb`` in ``output``."""
    return re.findall(rf"^{verb}\s.*?(\S+)$", output, flags=re.MULTILINE)


def test_migrate_status_rollback_and_migrate_again(cli: Cli) -> None:
    assert cli.first_migrate is not None
    assert "created the database" in cli.first_migrate.stdout
    assert sorted(migration_lines(cli.first_migrate.stdout, "applied")) == MIGRATION_IDS
    assert "nothing to apply" in cli.run("migrate").stdout

    status = cli.run("migrate", "--status").stdout
    assert sorted(migration_lines(status, "applied")) == MIGRATION_IDS
    assert migration_lines(status, "pending") == []

    newest = migration_lines(cli.run("rollback").stdout, "rolled back")
    assert len(newest) == 1, "rollback without --count reverts one migration"
    before = migration_lines(cli.run("rollback", "--count", "1").stdout, "rolled back")
    assert len(before) == 1 and before != newest
    status = cli.run("migrate", "--status").stdout
    assert sorted(migration_lines(status, "pending")) == sorted(newest + before)
    assert sorted(migration_lines(cli.run("migrate").stdout, "applied")) == sorted(newest + before)

    every = migration_lines(cli.run("rollback", "--all").stdout, "rolled back")
    assert sorted(every) == MIGRATION_IDS
    assert "nothing to roll back" in cli.run("rollback").stdout
    assert sorted(migration_lines(cli.run("migrate").stdout, "applied")) == MIGRATION_IDS


def test_verify_and_queries(cli: Cli) -> None:
    assert "queries agree with the schema" in cli.run("verify").stdout
    listed = cli.run("queries").stdout
    assert re.search(r"^agents\.get\s.*:one\s", listed, flags=re.MULTILINE), listed
    shown = cli.run("queries", "show", "agents.get").stdout
    assert "-- name: agents.get" in shown and "SELECT" in shown.upper()
    missing = cli.run("queries", "show", expect=2)
    assert "needs a query name" in missing.stderr


def test_demo_on_the_machines_server_and_embedded(cli: Cli) -> None:
    demo = cli.run("demo").stdout
    assert "demo complete" in demo and "embedded" not in demo, demo
    assert f"dbname={cli.dbname}" in demo, "the demo ran on the configured database"
    embedded = cli.run("demo", "--embedded").stdout
    assert "demo complete" in embedded
    assert f"dbname={cli.dbname}" in embedded, "the embedded database is named as in the URL"


def enqueue_audit_message(database_url: str) -> uuid.UUID:
    """One ``audit.log`` message committed to the outbox, as an application would."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        return outbox.enqueue(conn, AuditLog(action="cli.tested", entity="cli"))


def outbox_row(database_url: str, message_id: uuid.UUID) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return outbox.get(conn, message_id)


def pending_in_outbox(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return outbox.stats(conn).pending


def handled_by_worker(database_url: str, message_id: uuid.UUID) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return inbox.seen(conn, WORKER_CONSUMER, message_id)


def test_relay_once_then_worker_and_relay_stop_cleanly_on_sigterm(cli: Cli) -> None:
    first = enqueue_audit_message(cli.database_url)
    due = pending_in_outbox(cli.database_url)
    assert f"published {due} message(s)" in cli.run("relay", "--once").stdout
    assert outbox_row(cli.database_url, first).sent_at is not None
    assert pending_in_outbox(cli.database_url) == 0

    worker = cli.start("worker")
    wait_until(lambda: handled_by_worker(cli.database_url, first), worker, "handling a message")
    out, _ = cli.stop(worker, "worker")
    assert f"stopped after {due} message(s)" in out, out

    relay = cli.start("relay")
    second = enqueue_audit_message(cli.database_url)
    wait_until(
        lambda: outbox_row(cli.database_url, second).sent_at is not None, relay, "publishing"
    )
    out, _ = cli.stop(relay, "relay")
    assert "stopped after publishing 1 message(s)" in out, out


ASYNC_WORK = """
import asyncio


async def work(execution):
    await asyncio.sleep(0.05)  # an await: this runs on the worker's event loop
    return {"ran": "async", "input": execution.input}
"""


def test_worker_runs_a_coroutine_work_function(cli: Cli) -> None:
    (cli.cwd / "async_work.py").write_text(ASYNC_WORK)
    with psycopg.connect(cli.database_url) as conn, conn.transaction():
        owner = users.create(conn, {"email": "cli-async@example.com", "display_name": "Cli"})
        workflow = workflows.create(conn, {"owner_id": owner.id, "name": "async work"})
        execution = service.start_execution(conn, workflow.id, {"n": 1})
    cli.run("relay", "--once")

    def finished() -> bool:
        with psycopg.connect(cli.database_url, autocommit=True) as conn:
            return executions.get(conn, execution.id).status == "succeeded"

    worker = cli.start("worker", "--work", "async_work:work", env={"PYTHONPATH": str(cli.cwd)})
    wait_until(finished, worker, "running the coroutine work function")
    cli.stop(worker, "worker", "--work", "async_work:work")
    with psycopg.connect(cli.database_url, autocommit=True) as conn:
        done = executions.get(conn, execution.id)
    assert done.output == {"ran": "async", "input": {"n": 1}}


def test_storage_sweep_honours_the_grace_period(cli: Cli) -> None:
    # A staged object no row knows: what an upload killed before its commit leaves.
    stray = cli.storage / STAGING_PREFIX / str(uuid.uuid4())
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"left behind")
    kept = cli.run("storage", "sweep").stdout
    assert "0 staged object(s) without a row removed" in kept and stray.exists()
    swept = cli.run("storage", "sweep", "--grace-seconds", "0").stdout
    assert "1 staged object(s) without a row removed" in swept and not stray.exists()


@pytest.fixture
def own_database(cli: Cli) -> Iterator[str]:
    """A database of one test's own (its URL), not yet created; dropped afterwards."""
    dbname = f"{cli.dbname}_{uuid.uuid4().hex[:6]}"
    try:
        yield server_url(dbname)
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def app_tables(database_url: str) -> set[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'app\\_%'")
        return {row[0] for row in rows}


def test_rollback_of_a_migration_without_rollback_exits_non_zero_naming_it(
    cli: Cli, own_database: str
) -> None:
    # The application's migrations: the older one has no rollback file.
    folder = cli.cwd / f"app-migrations-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "app-0001.notes.sql").write_text("CREATE TABLE app_notes (id int PRIMARY KEY);\n")
    (folder / "app-0002.tags.sql").write_text("CREATE TABLE app_tags (id int PRIMARY KEY);\n")
    (folder / "app-0002.tags.rollback.sql").write_text("DROP TABLE app_tags;\n")
    env = {"TOOLKIT_DATABASE_URL": own_database, "TOOLKIT_MIGRATIONS_PATH": str(folder)}
    missing = str(folder / "app-0001.notes.rollback.sql")

    applied = migration_lines(cli.run("migrate", env=env).stdout, "applied")
    assert applied[-2:] == ["app-0001.notes", "app-0002.tags"]
    for args in (["--all"], ["--count", "2"]):
        # app-0002.tags has a rollback, but is not reverted alone: nothing or all.
        refused = cli.run("rollback", *args, expect=2, env=env)
        assert refused.stdout == "", "nothing may be reported as rolled back"
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and missing in lines[0], refused.stderr
    assert app_tables(own_database) == {"app_notes", "app_tags"}
    assert cli.run("rollback", env=env).stdout.strip() == "rolled back app-0002.tags"
    refused = cli.run("rollback", expect=2, env=env)
    assert refused.stdout == "" and missing in refused.stderr
    assert app_tables(own_database) == {"app_notes"}
    # The refused migration stayed applied, so migrate does not trip over its table.
    assert cli.run("migrate", env=env).stdout.strip() == "applied app-0002.tags"
    status = cli.run("migrate", "--status", env=env).stdout
    assert migration_lines(status, "pending") == []


def record_audit_events(database_url: str, count: int) -> None:
    with psycopg.connect(database_url) as conn, conn.transaction():
        for n in range(count):
            event = {"action": "cli.audited", "entity": "cli", "details": {"n": n}}
            audit_events.record(conn, event)


def rewrite_and_rechain(database_url: str, seq: int) -> None:
    """As the database owner could: edit row ``seq`` and recompute every later hash."""
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
        owner.execute("UPDATE audit_events SET details = '{\"n\": 99}' WHERE seq = %s", [seq])
        (last,) = owner.execute("SELECT max(seq) FROM audit_events").fetchone() or (0,)
        for row in range(seq, last + 1):
            owner.execute(
                "UPDATE audit_events SET prev_hash = coalesce("
                "(SELECT hash FROM audit_events WHERE seq = %(seq)s - 1), '\\x'::bytea) "
                "WHERE seq = %(seq)s",
                {"seq": row},
            )
            owner.execute(
                "UPDATE audit_events SET hash = audit_event_hash(prev_hash, seq, id, actor_id, "
                "action, entity, entity_id, details, created_at) WHERE seq = %(seq)s",
                {"seq": row},
            )


def test_audit_anchor_and_verify(cli: Cli, own_database: str) -> None:
    cli.run("migrate", env={"TOOLKIT_DATABASE_URL": own_database})
    store = cli.cwd / f"anchors-{uuid.uuid4().hex[:6]}"
    where = ["--database-url", own_database, "--anchor-url", f"file://{store}"]

    empty = cli.run("audit", "anchor", *where).stdout
    assert "the audit chain is empty; nothing to anchor" in empty
    record_audit_events(own_database, 5)
    first = cli.run("audit", "anchor", *where).stdout
    assert re.search(r"^audit anchor: seq 5 hash [0-9a-f]{64} written to audit-anchors/", first)
    assert "create-only" in first
    assert len(list((store / "audit-anchors").glob("*.json"))) == 1
    intact = cli.run("audit", "verify", *where).stdout
    assert "5 rows recomputed and linked; 1 anchor(s) agree (newest at seq 5" in intact

    record_audit_events(own_database, 3)
    second = cli.run("audit", "anchor", *where).stdout
    key = re.search(r"written to (\S+)", second)
    assert "seq 8" in second and key is not None
    intact = cli.run("audit", "verify", *where).stdout
    assert "8 rows recomputed and linked; 2 anchor(s) agree (newest at seq 8" in intact

    rewrite_and_rechain(own_database, 7)
    broken = cli.run("audit", "verify", *where, expect=1).stdout
    assert "rewritten at seq 7" in broken and "row 7 was rewritten" in broken, broken
    assert key.group(1) in broken, "the finding names the anchor it was checked against"
    assert "audit verify: 1 finding(s) in 8 rows against 2 anchor(s)" in broken
    # A broken chain is a runtime failure (exit 1), not a usage error (2).
    refused = cli.run("audit", "anchor", *where, expect=1)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to anchor" in lines[0], refused.stderr
    assert len(list((store / "audit-anchors").glob("*.json"))) == 2


@pytest.mark.parametrize(
    "command",
    [
        ["migrate"],
        ["migrate", "--status"],
        ["rollback"],
        ["verify"],
        ["demo"],
        ["relay", "--once"],
        ["worker"],
        ["storage", "sweep"],
    ],
    ids=" ".join,
)
def test_a_bad_setting_is_one_line_naming_the_variable(cli: Cli, command: list[str]) -> None:
    done = cli.run(*command, expect=2, env={"TOOLKIT_POOL_MAX_SIZE": "abc"})
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "TOOLKIT_POOL_MAX_SIZE" in lines[0], done.stderr
