"""The wheel carries sql/ and migrations/: installed in a fresh virtualenv, with
no checkout around, ``toolkit migrate``, ``verify`` and ``demo`` work, and the
demo falls back to an embedded PostgreSQL (the ``embedded`` extra) where no
server answers. The wheel and the virtualenv are session fixtures of
tests/conftest.py, shared with tests/test_cli_commands.py."""

from __future__ import annotations

import configparser
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
        assert str(init.relative_to(ROOT)) in names, f"{init} is missing from setup.cfg packages"
    for folder in ("sql", "migrations"):
        for path in (ROOT / folder).glob("*.sql"):
            assert f"toolkit/{folder}/{path.name}" in names
    assert "toolkit/py.typed" in names
    licenses = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
    licenses += [name for name in names if name.endswith(".dist-info/LICENSE")]
    assert licenses, f"no LICENSE in {sorted(n for n in names if '.dist-info/' in n)}"
    assert zipfile.ZipFile(wheel).read(licenses[0]) == (ROOT / "LICENSE").read_bytes()


def test_installed_distribution_name_and_version(installed_venv: Path, tmp_path: Path) -> None:
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "setup.cfg")
    assert metadata["metadata"]["name"] == DISTRIBUTION
    shown = run_ok(
        installed_venv / "bin" / "python",
        "-c",
        "import importlib.metadata as m, toolkit; "
        "print(toolkit.__version__, m.metadata(toolkit.DISTRIBUTION)['License'])",
        cwd=tmp_path,
    )
    assert shown.stdout.split() == [metadata["metadata"]["version"], "MIT"]


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
