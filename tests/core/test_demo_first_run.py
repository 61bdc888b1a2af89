"""``toolkit demo`` and ``toolkit migrate`` as a first-time user meets them: subprocess runs.

The demo runs once per module, from an empty folder, against a database of
its own on the README's default role (the ``postgres`` superuser), with the
default storage URL, a cache namespace of its own and RabbitMQ pointing at
a closed port; each test checks one thing its output (or Redis) must show.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from tests.conftest import server_url
from toolkit import DISTRIBUTION

CLOSED_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"
"""Nothing listens on port 1: every connection attempt is refused at once."""


def toolkit_env(**settings: str) -> dict[str, str]:
    """This process's environment without TOOLKIT_* settings, plus ``settings``."""
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("TOOLKIT_")}
    return {**inherited, **{f"TOOLKIT_{key.upper()}": value for key, value in settings.items()}}


def run_toolkit(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
        check=False,
    )


def drop_database(name: str) -> None:
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class DemoRun:
    """One finished ``toolkit demo`` run and where it ran."""

    done: subprocess.CompletedProcess[str]
    folder: Path
    namespace: str
    dbname: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    folder = tmp_path_factory.mktemp("first-run")
    dbname = f"toolkit_demo_{uuid.uuid4().hex[:8]}"
    namespace = f"demo-ns-{uuid.uuid4().hex[:8]}"
    env = toolkit_env(
        database_url=server_url(dbname), cache_namespace=namespace, amqp_url=CLOSED_AMQP_URL
    )
    try:
        yield DemoRun(run_toolkit("demo", env=env, cwd=folder), folder, namespace, dbname, env)
    finally:
        drop_database(dbname)
        client = redis.Redis(host="127.0.0.1", port=6379)
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_the_demo_completes(demo_run: DemoRun) -> None:
    assert demo_run.done.returncode == 0, demo_run.done.stdout + demo_run.done.stderr
    assert demo_run.done.stdout.rstrip().endswith("demo complete")


def test_without_rabbitmq_one_clear_line_and_no_pika_noise(demo_run: DemoRun) -> None:
    err = demo_run.done.stderr
    assert "ERROR pika" not in err and "Traceback" not in err, err
    lines = [line for line in demo_run.done.stdout.splitlines() if "RabbitMQ" in line]
    unreachable = [line for line in lines if "not reachable" in line]
    assert len(unreachable) == 1, demo_run.done.stdout
    (line,) = unreachable
    assert "127.0.0.1:1" in line and "guest:guest" not in line
    assert "wait in the outbox" in line and "toolkit relay" in line, line


def test_the_superuser_is_explained_once_in_the_demos_words(demo_run: DemoRun) -> None:
    assert "WARNING toolkit.db.database" not in demo_run.done.stderr, demo_run.done.stderr
    notes = [line for line in demo_run.done.stdout.splitlines() if "superuser" in line]
    assert len(notes) == 1, demo_run.done.stdout
    assert "'postgres'" in notes[0] and "toolkit_app" in notes[0]


def test_every_step_number_appears_once(demo_run: DemoRun) -> None:
    numbers = re.findall(r"^ ?(\d+)\. ", demo_run.done.stdout, flags=re.MULTILINE)
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)], numbers


def test_the_demo_says_where_it_wrote_the_report(demo_run: DemoRun) -> None:
    written = demo_run.folder / "toolkit-files"
    assert written.is_dir(), "the default TOOLKIT_STORAGE_URL is ./toolkit-files"
    (line,) = [line for line in demo_run.done.stdout.splitlines() if "report stored" in line]
    assert f"the folder {os.path.realpath(written)} " in line, line


def test_the_cache_keys_go_under_the_configured_namespace(demo_run: DemoRun) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        keys = list(client.scan_iter(f"{demo_run.namespace}:*"))
    finally:
        client.close()
    assert keys, f"no cache key under TOOLKIT_CACHE_NAMESPACE={demo_run.namespace}"


# -- the two workspaces (step 12) ----------------------------------------------

WORKSPACE_LINE = re.compile(
    r"^    workspace '(?P<name>\w+)' \(tenant (?P<tenant>[0-9a-f-]{36})\): "
    r"user (?P<email>\S+), agent 'Research helper' (?P<agent>[0-9a-f-]{36})$",
    flags=re.MULTILINE,
)


@dataclass(frozen=True)
class ShownWorkspace:
    """A workspace as the demo's output names it."""

    name: str
    tenant: uuid.UUID
    email: str
    agent: uuid.UUID


def shown_workspaces(out: str) -> list[ShownWorkspace]:
    return [
        ShownWorkspace(m["name"], uuid.UUID(m["tenant"]), m["email"], uuid.UUID(m["agent"]))
        for m in WORKSPACE_LINE.finditer(out)
    ]


def workspaces_section(out: str) -> list[str]:
    """The lines of step 12, without its heading."""
    _, _, rest = out.partition("\n12. ")
    return [line.strip() for line in rest.splitlines()[1:] if line.startswith("    ")]


@pytest.fixture(scope="module")
def second_run(demo_run: DemoRun) -> subprocess.CompletedProcess[str]:
    """``toolkit demo`` once more, on the first run's database, namespace and folder."""
    return run_toolkit("demo", env=demo_run.env, cwd=demo_run.folder)


def test_the_workspaces_section_shows_each_claim_as_toolkit_app(demo_run: DemoRun) -> None:
    out = demo_run.done.stdout
    lines = workspaces_section(out)
    assert lines, out
    role, *_ = lines
    assert role.startswith("run as the role toolkit_app (") and "-c role=toolkit_app" in role
    assert "login 'postgres'" in role and "row-level security does not bind 'postgres'" in role
    assert "each lists only its own agents: 'Acme' yes, 'Globex' yes" in lines, out
    assert (
        "a read of the other workspace's agent by id: NotFound in 'Acme', NotFound in 'Globex'"
        in (lines)
    ), out
    assert "a query of agents without a tenant: TenantRequired (an error, not an empty list)" in (
        lines
    ), out
    (cache,) = [line for line in lines if line.startswith("the same LLM request in both")]
    assert "computed in Acme, computed again in Globex" in cache and "two entries" in cache, cache
    assert f"{demo_run.namespace}:llm:v1:{{shared}}:" in cache, "the shared namespace is named"
    (seen,) = [line for line in lines if line.startswith("as 'postgres'")]
    assert "in 2 tenants" in seen, seen


def test_the_workspaces_rows_are_in_two_tenants_in_the_database(demo_run: DemoRun) -> None:
    a, b = shown_workspaces(demo_run.done.stdout)
    assert (a.name, b.name) == ("Acme", "Globex") and a.tenant != b.tenant
    with psycopg.connect(server_url(demo_run.dbname)) as superuser:  # RLS does not bind it
        for workspace in (a, b):
            agents = superuser.execute(
                "SELECT a.id, a.tenant_id, t.name FROM agents AS a"
                " JOIN tenants AS t ON t.id = a.tenant_id"
                " WHERE a.name = 'Research helper' AND a.tenant_id = %s",
                [workspace.tenant],
            ).fetchall()
            assert agents == [(workspace.agent, workspace.tenant, workspace.name)]
            memberships = superuser.execute(
                "SELECT m.tenant_id FROM memberships AS m JOIN users AS u ON u.id = m.user_id"
                " WHERE u.email = %s",
                [workspace.email],
            ).fetchall()
            assert memberships == [(workspace.tenant,)], "the user belongs to its workspace only"


def test_the_same_llm_request_is_one_entry_per_workspace_in_redis(demo_run: DemoRun) -> None:
    (cache,) = [
        line
        for line in workspaces_section(demo_run.done.stdout)
        if line.startswith("the same LLM request")
    ]
    client = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    fingerprints = []
    try:
        for workspace in shown_workspaces(demo_run.done.stdout):
            prefix = f"{demo_run.namespace}:llm:v1:{{{workspace.tenant}}}:"
            assert prefix in cache, "the line names each workspace's entry"
            rest = [key[len(prefix) :] for key in client.scan_iter(f"{prefix}*")]
            entries = [r for r in rest if ":" not in r and r != "gen"]
            assert len(entries) == 1, rest
            fingerprints.append(entries[0])
    finally:
        client.close()
    assert fingerprints[0] == fingerprints[1], "the two entries are of the same request"
    assert f":{fingerprints[0][:12]}..." in cache


def test_a_second_run_works_with_fresh_workspaces(
    demo_run: DemoRun, second_run: subprocess.CompletedProcess[str]
) -> None:
    assert second_run.returncode == 0, second_run.stdout + second_run.stderr
    assert second_run.stdout.rstrip().endswith("demo complete")
    again = workspaces_section(second_run.stdout)
    assert "each lists only its own agents: 'Acme' yes, 'Globex' yes" in again, second_run.stdout
    cache = next(line for line in again if line.startswith("the same LLM request"))
    assert "computed in Acme, computed again in Globex" in cache, "fresh tenants, fresh entries"
    first = {w.tenant for w in shown_workspaces(demo_run.done.stdout)}
    second = {w.tenant for w in shown_workspaces(second_run.stdout)}
    assert len(first | second) == 4, "each run makes its own two tenants"
    with psycopg.connect(server_url(demo_run.dbname)) as superuser:
        (named,) = superuser.execute(
            "SELECT count(*) FROM tenants WHERE id = ANY(%s) AND name IN ('Acme', 'Globex')",
            [list(first | second)],
        ).fetchone() or (0,)
    assert named == 4


def test_the_fixes_name_an_install_that_works() -> None:
    """pgserver is on PyPI; the toolkit is not, and "toolkit" there is another project."""
    env = toolkit_env()
    helped = run_toolkit("demo", "--help", env=env)
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert "toolkit[embedded]" not in text and "pip install pgserver" in text, text
    assert DISTRIBUTION in text
    nowhere = run_toolkit(
        "demo", "--database-url", "postgresql://postgres@127.0.0.1:1/none", env=env
    )
    assert nowhere.returncode == 1  # this virtualenv has no pgserver
    assert "pip install pgserver" in nowhere.stdout, nowhere.stdout
    assert f"'{DISTRIBUTION}[embedded]'" not in nowhere.stdout


def test_migrate_prints_each_applied_line_as_it_is_applied(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "app-0001.quick.sql").write_text("CREATE TABLE app_quick (id int);\n")
    # A DO block: yoyo prints the rows of a SELECT to stdout.
    (folder / "app-0002.slow.sql").write_text("DO $$ BEGIN PERFORM pg_sleep(3); END $$;\n")
    dbname = f"toolkit_stream_{uuid.uuid4().hex[:8]}"
    env = toolkit_env(database_url=server_url(dbname), migrations_path=str(folder))
    process = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    arrived: dict[str, float] = {}
    try:
        assert process.stdout is not None
        for line in process.stdout:
            arrived[line.strip()] = time.monotonic()
        assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        drop_database(dbname)
    assert list(arrived)[:2] == ["created the database", "applied 0001.core-schema"], arrived
    quick, slow = arrived["applied app-0001.quick"], arrived["applied app-0002.slow"]
    assert slow - quick > 2.0, "the quick migration's line waited for the slow one"
