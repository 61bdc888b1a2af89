"""The wheel carries sql/ and migrations/: installed in a fresh virtualenv, with
no checkout around, ``toolkit migrate``, ``verify`` and ``demo`` work, and the
demo falls back to an embedded PostgreSQL (the ``embedded`` extra) where no
server answers. Its metadata is PEP 621's (pyproject.toml), psycopg's binary is
an extra, and a project of its own, outside the checkout, depends on the wheel,
migrates and passes its test through the toolkit's pytest plugin. The wheel and
the virtualenv are session fixtures of tests/conftest.py, shared with
tests/test_cli_commands.py."""

from __future__ import annotations

import email
import os
import tomllib
import uuid
import venv
import zipfile
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, run_ok, server_url
from toolkit import DISTRIBUTION

pytestmark = pytest.mark.packaging


def test_wheel_holds_every_subpackage_the_sql_and_the_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in (ROOT / "toolkit").rglob("__init__.py"):
        assert str(init.relative_to(ROOT)) in names, (
            f"{init} is missing from [tool.setuptools] packages in pyproject.toml"
        )
    for folder in ("sql", "migrations"):
        for path in (ROOT / folder).glob("*.sql"):
            assert f"toolkit/{folder}/{path.name}" in names
    assert "toolkit/py.typed" in names
    licenses = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
    licenses += [name for name in names if name.endswith(".dist-info/LICENSE")]
    assert licenses, f"no LICENSE in {sorted(n for n in names if '.dist-info/' in n)}"
    assert zipfile.ZipFile(wheel).read(licenses[0]) == (ROOT / "LICENSE").read_bytes()


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_installed_distribution_name_and_version(installed_venv: Path, tmp_path: Path) -> None:
    assert PROJECT["name"] == DISTRIBUTION
    shown = run_ok(
        installed_venv / "bin" / "python",
        "-c",
        "import importlib.metadata as m, toolkit; "
        "print(toolkit.__version__, m.metadata(toolkit.DISTRIBUTION)['License-Expression'])",
        cwd=tmp_path,
    )
    assert shown.stdout.split() == [PROJECT["version"], "MIT"]


def test_version_from_the_script_and_from_python_m(installed_venv: Path, tmp_path: Path) -> None:
    expected = f"toolkit {PROJECT['version']} ({DISTRIBUTION})\n"
    assert run_ok(installed_venv / "bin" / "toolkit", "--version", cwd=tmp_path).stdout == expected
    python = installed_venv / "bin" / "python"
    assert run_ok(python, "-m", "toolkit", "--version", cwd=tmp_path).stdout == expected
    assert run_ok(python, "-m", "toolkit", "--help", cwd=tmp_path).stdout.startswith(
        "usage: toolkit "
    )


def test_psycopg_binary_is_an_extra_not_a_requirement(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(name))
    requires = metadata.get_all("Requires-Dist") or []
    unconditional = [r for r in requires if ";" not in r]
    assert "psycopg[pool]<4,>=3.2" in unconditional, requires
    assert not [r for r in unconditional if "binary" in r], unconditional
    for extra in ("binary", "test", "embedded"):
        assert f'psycopg[binary]<4,>=3.2; extra == "{extra}"' in requires, extra
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"


CONSUMER_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "notes-app"
version = "0.0.1"
requires-python = ">=3.11"
dependencies = [
    "agent-persistence-toolkit[binary] @ {wheel_url}",
    "pytest>=8",
]

[tool.setuptools]
packages = []
"""

CONSUMER_MIGRATION = """\
-- depends: 0001.core-schema
CREATE TABLE notes_app_notes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id uuid NOT NULL REFERENCES users (id),
    body text NOT NULL
);
"""

CONSUMER_TEST = """\
from toolkit.repositories import users


def test_a_note_for_a_user(toolkit_db):
    with toolkit_db.connection() as conn:
        owner = users.create(conn, {"email": "notes@example.com", "display_name": "N"})
        conn.execute(
            "INSERT INTO notes_app_notes (owner_id, body) VALUES (%s, 'hello')", [owner.id]
        )
        (count,) = conn.execute("SELECT count(*) FROM notes_app_notes").fetchone()
    assert count == 1
"""


def test_a_project_outside_the_checkout_depends_on_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """What the README's install section says: depend on the built wheel by path."""
    project = tmp_path / "notes-app"
    (project / "migrations").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "pyproject.toml").write_text(CONSUMER_PYPROJECT.format(wheel_url=wheel.as_uri()))
    (project / "migrations" / "notes-0001.notes.sql").write_text(CONSUMER_MIGRATION)
    (project / "migrations" / "notes-0001.notes.rollback.sql").write_text(
        "DROP TABLE notes_app_notes;\n"
    )
    (project / "tests" / "test_notes.py").write_text(CONSUMER_TEST)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    run_ok(bin_dir / "python", "-m", "pip", "install", "-q", str(project), cwd=project)

    dbname = f"toolkit_consumer_{uuid.uuid4().hex[:8]}"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TOOLKIT_") and key not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    environment |= {
        "TOOLKIT_DATABASE_URL": server_url(dbname),
        "TOOLKIT_MIGRATIONS_PATH": str(project / "migrations"),
        "TOOLKIT_TEST_SERVER_URL": server_url(),
    }
    try:
        migrated = run_ok(bin_dir / "toolkit", "migrate", cwd=project, env=environment)
        assert "applied 0001.core-schema" in migrated.stdout
        assert "applied notes-0001.notes" in migrated.stdout
        tested = run_ok(
            bin_dir / "pytest", "-q", "-p", "no:cacheprovider", cwd=project, env=environment
        )
        assert "1 passed" in tested.stdout, tested.stdout
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def test_installed_wheel_migrates_verifies_and_runs_the_demo(
    installed_venv: Path, tmp_path: Path
) -> None:
    toolkit = installed_venv / "bin" / "toolkit"
    dbname = f"toolkit_wheel_{uuid.uuid4().hex[:8]}"
    url = server_url(dbname)
    away = tmp_path / "elsewhere"
    away.mkdir()
    try:
        migrated = run_ok(toolkit, "migrate", "--database-url", url, cwd=away)
        assert "applied 0001.core-schema" in migrated.stdout
        assert "queries agree" in run_ok(toolkit, "verify", "--database-url", url, cwd=away).stdout
        assert "demo complete" in run_ok(toolkit, "demo", "--database-url", url, cwd=away).stdout
        # No server at the URL: the demo falls back to the embedded PostgreSQL.
        nowhere = "postgresql://postgres@127.0.0.1:1/none"
        embedded = run_ok(toolkit, "demo", "--database-url", nowhere, cwd=away).stdout
        assert "using an embedded one" in embedded and "demo complete" in embedded
        where = run_ok(
            installed_venv / "bin" / "python",
            "-c",
            "import toolkit.db.registry as r; print(r.package_directory('sql'))",
            cwd=away,
        )
        assert str(installed_venv) in where.stdout
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def test_langgraph_extra_is_enough_for_the_checkpointer(wheel: Path, tmp_path: Path) -> None:
    """The extra brings the checkpoint interfaces and langchain-core, not the graph runtime."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run_ok(python, "-m", "pip", "install", "-q", f"{wheel}[langgraph]", cwd=tmp_path)
    probe = (
        "import importlib.util, toolkit.integrations.langgraph as lg, "
        "toolkit.integrations.langgraph_serde, langchain_core.messages; "
        "print(lg.ToolkitCheckpointSaver.__name__, importlib.util.find_spec('langgraph.graph'))"
    )
    assert run_ok(python, "-c", probe, cwd=tmp_path).stdout.split() == [
        "ToolkitCheckpointSaver",
        "None",
    ]
