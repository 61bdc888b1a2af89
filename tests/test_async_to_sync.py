"""tools/async_to_sync.py: what it turns async code into, and its staleness check.

Runs in ``tox -e lint`` (the transform formats with ruff).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "async_to_sync.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="the transform needs ruff (tox -e lint)"
)


def _tool() -> object:
    if "async_to_sync" in sys.modules:
        return sys.modules["async_to_sync"]
    spec = importlib.util.spec_from_file_location("async_to_sync", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["async_to_sync"] = module
    spec.loader.exec_module(module)
    return module


def transform(source: str) -> str:
    tool = _tool()
    path = ROOT / "toolkit" / "aio" / "db" / "example.py"
    return tool.transform(textwrap.dedent(source), path)  # type: ignore[attr-defined]


def test_async_code_becomes_the_sync_twin() -> None:
    generated = transform(
        '''
        """Example: ``await agents.get(conn, id)`` inside ``async with db.transaction()``."""

        from collections.abc import AsyncIterator, Awaitable, Callable
        from contextlib import asynccontextmanager

        from toolkit.aio.concurrency import ASYNC
        from toolkit.aio.concurrency import sleep as nap
        from toolkit.aio.db.database import AsyncConnection, AsyncDatabase

        __all__ = ["AsyncDatabase", "fetch"]


        async def fetch(db: AsyncDatabase, check: Callable[[], Awaitable[int]]) -> int:
            async with db.connection() as conn:  # a comment survives
                total = await run(conn, _count, id=1)
            async for row in rows(conn):
                total += await check()
            if ASYNC:
                await nap(0)
            else:
                total += 0
            return total


        class Keeper:
            async def __aenter__(self) -> "Keeper":
                return self

            async def aclose(self) -> None:
                await nap(0.1)


        @asynccontextmanager
        async def opened(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
            yield conn
        '''
    )
    assert generated.startswith("# Generated from toolkit/aio/db/example.py")
    assert '"""Example: ``agents.get(conn, id)`` inside ``with db.transaction()``."""' in generated
    code = generated.split("\n", 2)[2]  # after the header
    assert "async " not in code and "await" not in code
    assert "from toolkit.concurrency import sleep as nap" in generated
    assert "ASYNC" not in generated
    assert "from toolkit.db.database import Connection, Database" in generated
    assert '__all__ = ["Database", "fetch"]' in generated
    assert "def fetch(db: Database, check: Callable[[], int]) -> int:" in generated
    assert "with db.connection() as conn:  # a comment survives" in generated
    assert "total = run(conn, _count, id=1)" in generated
    assert "for row in rows(conn):" in generated
    assert "total += 0" in generated and "nap(0)\n" not in generated
    assert "def __enter__(self)" in generated and "def close(self)" in generated
    assert "@contextmanager" in generated
    assert "def opened(conn: Connection) -> Iterator[Connection]:" in generated
    compile(generated, "generated.py", "exec")


def test_what_cannot_be_transformed_is_refused() -> None:
    tool = _tool()
    with pytest.raises(tool.TransformError, match="async comprehensions"):  # type: ignore[attr-defined]
        transform(
            """
            async def f(rows):
                return [row async for row in rows]
            """
        )


def test_the_check_names_a_stale_generated_module(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "toolkit", copy / "toolkit")
    shutil.copytree(ROOT / "tools", copy / "tools")
    shutil.copy(ROOT / "ruff.toml", copy / "ruff.toml")
    shutil.copy(ROOT / ".gitattributes", copy / ".gitattributes")
    check = [sys.executable, str(copy / "tools" / "async_to_sync.py"), "--check"]
    fresh = subprocess.run(check, capture_output=True, text=True, check=False, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    source = copy / "toolkit" / "aio" / "repositories" / "agents.py"
    original = source.read_text()
    assert "The first active agents" in original
    source.write_text(original.replace("The first active agents", "The first active robots"))
    stale = subprocess.run(check, capture_output=True, text=True, check=False, timeout=300)
    assert stale.returncode == 1
    assert "toolkit/repositories/agents.py is stale" in stale.stderr
    regenerate = [sys.executable, str(copy / "tools" / "async_to_sync.py")]
    subprocess.run(regenerate, check=True, capture_output=True, timeout=300)
    assert (
        "The first active robots" in (copy / "toolkit" / "repositories" / "agents.py").read_text()
    )
    assert subprocess.run(check, capture_output=True, check=False, timeout=300).returncode == 0


def test_async_only_modules_are_declared_by_path_not_by_file_name() -> None:
    tool = _tool()
    aio = ROOT / "toolkit" / "aio"
    assert not tool.is_source(aio / "concurrency.py")  # type: ignore[attr-defined]
    assert not tool.is_source(aio / "storage" / "async_io.py")  # type: ignore[attr-defined]
    assert not tool.is_source(aio / "storage" / "__init__.py")  # type: ignore[attr-defined]
    # the same file name elsewhere is a source like any other
    assert tool.is_source(aio / "db" / "concurrency.py")  # type: ignore[attr-defined]
    assert tool.is_source(aio / "storage" / "filestore.py")  # type: ignore[attr-defined]
    for path in tool.ASYNC_ONLY:  # type: ignore[attr-defined]
        sync = ROOT / "toolkit" / path  # none, or hand-written (the sync primitives)
        assert not sync.exists() or not sync.read_text().startswith("# Generated from "), path


@pytest.mark.parametrize(
    ("table", "rule", "message"),
    [
        ("RENAMES", {"afrobnicate": "frobnicate"}, "rename rule 'afrobnicate' -> 'frobnicate'"),
        ("RENAMES", {"AsyncWidget": "Widget"}, "'AsyncWidget' -> 'Widget' repeats the AsyncX"),
        ("MODULES", {"aiofiles.os": "os"}, "rename rule 'aiofiles.os' -> 'os' matches nothing"),
    ],
)
def test_a_rename_rule_that_matches_nothing_fails_the_run_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    table: str,
    rule: dict[str, str],
    message: str,
) -> None:
    tool = _tool()
    monkeypatch.setattr(tool, table, {**getattr(tool, table), **rule})
    assert tool.main(["--check"]) == 2  # type: ignore[attr-defined]
    assert message in capsys.readouterr().err


def test_a_missing_async_only_path_fails_the_run_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _tool()
    monkeypatch.setattr(tool, "ASYNC_ONLY", tool.ASYNC_ONLY | {"db/gone.py"})  # type: ignore[attr-defined]
    assert tool.main(["--check"]) == 2  # type: ignore[attr-defined]
    assert "async-only module 'db/gone.py' (ASYNC_ONLY) does not exist" in capsys.readouterr().err


def test_a_source_never_overwrites_a_hand_written_sync_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _tool()
    source = tmp_path / "toolkit" / "aio" / "repositories" / "records.py"
    target = tmp_path / "toolkit" / "repositories" / "records.py"
    for path, text in ((source, "async def f() -> None:\n    pass\n"), (target, '"""Mine."""\n')):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool, "ASYNC_ROOT", tmp_path / "toolkit" / "aio")
    monkeypatch.setattr(tool, "SYNC_ROOT", tmp_path / "toolkit")
    for check in ([], ["--check"]):
        assert tool.main([*check, str(source)]) == 2  # type: ignore[attr-defined]
        assert (
            "toolkit/aio/repositories/records.py would overwrite the hand-written "
            "toolkit/repositories/records.py"
        ) in capsys.readouterr().err
    assert target.read_text() == '"""Mine."""\n'


def test_gitattributes_marks_exactly_the_generated_modules() -> None:
    tool = _tool()
    marked = {
        line.split()[0].lstrip("/")
        for line in (ROOT / ".gitattributes").read_text(encoding="utf-8").splitlines()
        if "linguist-generated=true" in line
    }
    generated = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "toolkit").rglob("*.py")
        if path.read_text(encoding="utf-8").startswith("# Generated from ")
    }
    assert marked == generated
    sources = {tool.sync_path(s).relative_to(ROOT).as_posix() for s in tool.sources()}  # type: ignore[attr-defined]
    assert generated == sources


def test_the_check_fails_on_a_stale_gitattributes_and_the_run_keeps_other_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _tool()
    attributes = tmp_path / ".gitattributes"
    real = (ROOT / ".gitattributes").read_text(encoding="utf-8")
    dropped = "/toolkit/db/drivers.py linguist-generated=true\n"
    attributes.write_text("*.sql text\n" + real.replace(dropped, ""), encoding="utf-8")
    monkeypatch.setattr(tool, "GITATTRIBUTES", attributes)
    assert tool.main(["--check"]) == 1  # type: ignore[attr-defined]
    assert ".gitattributes is stale" in capsys.readouterr().err
    fixed = tool.gitattributes(
        attributes.read_text(encoding="utf-8"),
        [  # type: ignore[attr-defined]
            tool.sync_path(s)
            for s in tool.sources()  # type: ignore[attr-defined]
        ],
    )
    assert fixed == "*.sql text\n" + real
