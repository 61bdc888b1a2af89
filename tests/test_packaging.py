"""The wheel carries sql/ and migrations/: installed in a fresh virtualenv, with
no checkout around, ``toolkit migrate``, ``verify`` and ``demo`` work, and the
demo falls back to an embedded PostgreSQL (the ``embedded`` extra) where no
server answers."""

from __future__ import annotations

import subprocess
import sys
import uuid
import venv
import zipfile
from pathlib import Path

import psycopg
import pytest

from tests.conftest import server_url

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.packaging


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT, cwd=out)
    (built,) = out.glob("toolkit-*.whl")
    return built


def test_wheel_holds_every_subpackage_and_the_sql(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in (ROOT / "toolkit").rglob("__init__.py"):
        assert str(init.relative_to(ROOT)) in names, f"{init} is missing from setup.cfg packages"
    for folder in ("sql", "migrations"):
        for path in (ROOT / folder).glob("*.sql"):
            assert f"toolkit/{folder}/{path.name}" in names
    assert "toolkit/py.typed" in names


def test_installed_wheel_migrates_verifies_and_runs_the_demo(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", f"{wheel}[embedded]", cwd=tmp_path)
    toolkit = env_dir / "bin" / "toolkit"
    dbname = f"toolkit_wheel_{uuid.uuid4().hex[:8]}"
    url = server_url(dbname)
    away = tmp_path / "elsewhere"
    away.mkdir()
    try:
        migrated = run(toolkit, "migrate", "--database-url", url, cwd=away)
        assert "applied 0001.core-schema" in migrated.stdout
        assert "queries agree" in run(toolkit, "verify", "--database-url", url, cwd=away).stdout
        assert "demo complete" in run(toolkit, "demo", "--database-url", url, cwd=away).stdout
        # No server at the URL: the demo falls back to the embedded PostgreSQL.
        nowhere = "postgresql://postgres@127.0.0.1:1/none"
        embedded = run(toolkit, "demo", "--database-url", nowhere, cwd=away).stdout
        assert "using an embedded one" in embedded and "demo complete" in embedded
        where = run(
            python,
            "-c",
            "import toolkit.db.registry as r; print(r.package_directory('sql'))",
            cwd=away,
        )
        assert str(env_dir) in where.stdout
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
