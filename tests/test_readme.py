"""The README's code runs (issue "The first hour", item 2).

Every ```python block of README.md and of the examples' READMEs
(examples/*/README.md) is run as a script of its own, in a fresh interpreter
whose working folder is an empty temporary one, with ``TOOLKIT_*`` pointing
at this test's freshly migrated database, a temporary storage folder, and a
Redis namespace and queue prefix of its own: it must exit 0. A block is
copy-pasted, never edited, so a snippet cannot rot unnoticed.

An HTML comment on the line before a block's fence changes that (see the
README's Development section):

* ``<!-- snippet: fragment -->``: not a script (a signature, a piece of a
  route); it is only compiled, so it must still be valid Python;
* ``<!-- snippet: needs ITEM ... -->``: an ITEM with a ``/`` is a folder of
  the repository put on ``PYTHONPATH`` (an example application's package);
  any other ITEM is a module the block imports from an optional extra or an
  example's dependencies. Where one is not installed the block is skipped,
  naming it: ``tox -e integrations`` and ``tox -e agents-api`` install them
  and run this file too.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from toolkit.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", *sorted(ROOT.glob("examples/*/README.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<body>.*?)\s*-->\s*$")
ANY_MARKER = re.compile(r"<!--\s*snippet\b")
BLOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class Block:
    """One ```python block: where it is, its code and its marker."""

    readme: Path
    line: int  # of the opening fence, 1-based
    code: str
    fragment: bool = False
    folders: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.readme.relative_to(ROOT)}:{self.line}"


def _marker(body: str) -> tuple[bool, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(fragment, folders, modules, problems) of a ``snippet:`` marker's body."""
    kind, _, rest = body.partition(" ")
    items = tuple(rest.split())
    if kind == "fragment":
        return True, (), (), ()
    if kind == "needs" and items:
        folders = tuple(item for item in items if "/" in item)
        modules = tuple(item for item in items if "/" not in item)
        missing = [f for f in folders if not (ROOT / f).is_dir()]
        return False, folders, modules, tuple(f"no folder {f}" for f in missing)
    return False, (), (), (f"unknown marker {body!r}: use 'fragment' or 'needs ITEM ...'",)


def blocks_of(readme: Path) -> list[Block]:
    """The ```python blocks of ``readme``, with the marker on the line before each."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, info = opening["indent"], opening["info"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if info == "python":
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines]
            code = "\n".join(body[index + 1 : end]) + "\n"
            previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marked = MARKER.match(previous)
            fragment, folders, modules, problems = (
                _marker(marked["body"]) if marked else (False, (), (), ())
            )
            if not marked and ANY_MARKER.search(previous):
                problems = (f"malformed marker {previous.strip()!r}",)
            blocks.append(Block(readme, index + 1, code, fragment, folders, modules, problems))
        index = end + 1
    return blocks


BLOCKS = [block for readme in READMES for block in blocks_of(readme)]


def test_every_python_block_is_found() -> None:
    """The parser sees each ```python fence, in the top README and in every example's."""
    assert (ROOT / "examples" / "agents_api" / "README.md") in READMES
    for readme in READMES:
        text = readme.read_text(encoding="utf-8")
        fences = len(re.findall(r"^\s*```python\s*$", text, re.MULTILINE))
        assert len(blocks_of(readme)) == fences, readme
    ran = [block for block in BLOCKS if not block.fragment]
    fragments = [block for block in BLOCKS if block.fragment]
    # Fragments are the exception: most of what the README shows must run.
    assert len(ran) > 2 * len(fragments), (len(ran), len(fragments))


def test_a_fragment_is_still_valid_python() -> None:
    """A block marked as a fragment is not run, but it must compile (top-level await allowed)."""
    for block in (b for b in BLOCKS if b.fragment):
        assert not block.problems, f"{block.where}: {'; '.join(block.problems)}"
        compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _installed(module: str) -> bool:
    """Whether ``module`` (dotted names too) can be imported here."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


@pytest.fixture
def cache_namespace() -> Iterator[str]:
    """A Redis namespace of this test's own, emptied afterwards."""
    namespace = f"readme-{uuid.uuid4().hex[:12]}"
    yield namespace
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        for key in client.scan_iter(match=f"{namespace}:*", count=500):
            client.unlink(key)
    finally:
        client.close()


def _environment(
    database_url: str, storage: Path, cache_namespace: str, block: Block
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(
        {
            "TOOLKIT_DATABASE_URL": database_url,
            "TOOLKIT_STORAGE_URL": storage.as_uri(),
            "TOOLKIT_REDIS_URL": "redis://127.0.0.1:6379/0",
            "TOOLKIT_CACHE_NAMESPACE": cache_namespace,
            "TOOLKIT_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
            "TOOLKIT_QUEUE_PREFIX": f"{cache_namespace}.",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    folders = [str(ROOT / folder) for folder in block.folders]
    if folders:
        env["PYTHONPATH"] = os.pathsep.join([*folders, *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.fragment], ids=lambda b: b.where)
def test_a_python_block_runs_as_written(
    block: Block, database_url: str, cache_namespace: str, tmp_path: Path
) -> None:
    """Copied into a script and run, the block exits 0."""
    assert not block.problems, f"{block.where}: {'; '.join(block.problems)}"
    missing = [m for m in block.modules if not _installed(m)]
    if missing:
        pytest.skip(f"{block.where} needs {', '.join(missing)} (tox -e integrations, agents-api)")
    workdir, storage = tmp_path / "cwd", tmp_path / "files"
    workdir.mkdir()
    storage.mkdir()
    script = workdir / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        env=_environment(database_url, storage, cache_namespace, block),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{block.where}: the block exited {result.returncode}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


def _settings_rows() -> list[tuple[list[str], list[str]]]:
    """(variables, defaults) of each row of the README's Settings table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or not cells[0].startswith("`TOOLKIT_"):
            continue
        variables = re.findall(r"`(TOOLKIT_\w+)`", cells[0])
        defaults = [part.strip().strip("`") for part in cells[1].split(" / ")]
        assert cells[2], f"{cells[0]} has no meaning"
        rows.append((variables, defaults if len(defaults) == len(variables) else [cells[1]]))
    return rows


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    """Every Settings field is a row (its variable, its default, a meaning); no row is stale."""
    rows = _settings_rows()
    documented = {
        name: (defaults, i) for variables, defaults in rows for i, name in enumerate(variables)
    }
    expected = {ENV_PREFIX + name.upper(): info for name, info in Settings.model_fields.items()}
    missing = sorted(set(expected) - set(documented))
    assert not missing, f"missing from the README's Settings table: {missing}"
    stale = sorted(set(documented) - set(expected) - {"TOOLKIT_TEST_SERVER_URL"})
    assert not stale, f"in the README's Settings table but not a setting: {stale}"
    for name, info in expected.items():
        defaults, position = documented[name]
        shown = defaults[position] if len(defaults) > 1 else defaults[0]
        if info.default is None:
            continue  # "the same", "TOOLKIT_STORAGE_URL", "none": said in words
        wanted = "empty" if info.default == "" else str(info.default)
        assert shown == wanted, f"{name}: the table says {shown!r}, the default is {wanted!r}"
