"""Errors and logs leak nothing (issue 13, item 6).

Every test plants recognisable secrets (passwords in the database, Redis,
RabbitMQ and storage URLs, an ``sk-`` API key and a prompt in LLM-cache
requests, an email in a duplicate user, a secret in an agent's config),
drives a fault path of one layer against the real services, and then checks
that no planted secret appears in the exception's formatted traceback, in
``str`` and ``repr`` of it and of every exception reachable from it through
``__cause__`` and ``__context__`` (driver exceptions included, suppressed
contexts included), in any log record at INFO or above (its traceback
included), or in the output of the ``toolkit`` command.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from toolkit.cache import CacheClient, LLMCache
from toolkit.config import load_settings
from toolkit.db import Database, migrate
from toolkit.db.conninfo import describe_target, mask_conninfo
from toolkit.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NotFound,
    StaleVersion,
    ToolkitError,
    Unavailable,
)
from toolkit.messaging import outbox
from toolkit.messaging.models import NotificationSend
from toolkit.messaging.publisher import Publisher
from toolkit.messaging.relay import Relay
from toolkit.messaging.topology import Topology
from toolkit.repositories import agents
from toolkit.storage import open_storage
from toolkit.tenants import DEFAULT_TENANT

from .core.factories import make_agent
from .support.modes import both

DB_PASSWORD = "pgPw-PLANTED-7f3a"
AMQP_PASSWORD = "amqpPw-PLANTED-91c2"
REDIS_PASSWORD = "redisPw-PLANTED-44d1"
STORAGE_PASSWORD = "storePw-PLANTED-5e80"
API_KEY = "sk-PLANTEDabcdefghijklmnopqrstuvwx12345"
PROMPT = "PLANTED prompt: the launch code is tangerine-42"
EMAIL = "planted.person@example.org"
CONFIG_SECRET = "cfgSecret-PLANTED-0b9e"
PLANTED = (
    DB_PASSWORD,
    AMQP_PASSWORD,
    REDIS_PASSWORD,
    STORAGE_PASSWORD,
    API_KEY,
    PROMPT,
    EMAIL,
    CONFIG_SECRET,
)

CLOSED_PORT = 1
"""Nothing listens on port 1 of this machine: connecting is refused at once."""

ROOT = Path(__file__).resolve().parents[1]


# -- where a secret could show ------------------------------------------------


def chain_links(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable from it through ``__cause__`` and ``__context__``.

    Both links of every exception are followed, recursively (a suppressed
    ``__context__`` too), whatever the exception's type.
    """
    links: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        links.append(link)
        pending += [link.__cause__, link.__context__]
        if isinstance(link, BaseExceptionGroup):
            pending += link.exceptions
    return links


def exception_texts(exc: BaseException) -> list[str]:
    """The formatted traceback of ``exc``, and ``str`` and ``repr`` of every link of its chains."""
    texts = ["".join(traceback.format_exception(exc))]
    for link in chain_links(exc):
        texts += [str(link), repr(link)]
    return texts


def logged_texts(records: Iterable[logging.LogRecord]) -> list[str]:
    """The message and traceback of every record at INFO or above."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(r) for r in records if r.levelno >= logging.INFO]


def leaks(texts: Iterable[str]) -> list[tuple[str, str]]:
    """Every (secret, text) pair where a planted secret shows in a text."""
    return [(secret, text) for text in texts for secret in PLANTED if secret in text]


@pytest.fixture
def watched(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., None]]:
    """Capture the toolkit's logs at DEBUG and everyone's at INFO; ``check(*excs)`` asserts.

    Calling ``check`` with the exceptions a scenario raised asserts that none
    of them, and no log record so far, shows a planted secret.
    """
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="toolkit")

    def check(*excs: BaseException, extra: Iterable[str] = ()) -> None:
        texts = [text for exc in excs for text in exception_texts(exc)]
        found = leaks([*texts, *logged_texts(caplog.records), *extra])
        assert not found, "planted secrets leaked:\n" + "\n".join(
            f"  {secret!r} in {text!r}" for secret, text in found
        )

    yield check


def raised(action: Callable[[], object], kind: type[BaseException]) -> BaseException:
    """The exception of ``kind`` that ``action`` raises (the test fails if it raises none)."""
    with pytest.raises(kind) as info:
        action()
    return info.value


def test_the_check_sees_a_planted_secret_where_it_is() -> None:
    """The detector itself: a message quoting a URL unmasked is caught, a masked one is not."""
    url = f"postgresql://app:{DB_PASSWORD}@db:5432/x"
    error = Unavailable(f"cannot reach {url}")
    formatted = "".join(traceback.format_exception(error))
    assert leaks(exception_texts(error)) == [
        (DB_PASSWORD, formatted),
        (DB_PASSWORD, str(error)),
        (DB_PASSWORD, repr(error)),
    ]
    chained = ConfigurationError("outer")
    chained.__cause__ = error
    assert leaks(exception_texts(chained))
    assert not leaks([f"cannot reach {url.replace(DB_PASSWORD, '***')}"])
    # Any exception on any link: a driver's, two links down a suppressed __context__.
    driver = KeyError(f"DETAIL: Key (email)=({EMAIL}) already exists.")
    middle = ValueError("middle")
    middle.__context__ = driver
    outer = Conflict("outer")
    outer.__context__, outer.__suppress_context__ = middle, True
    assert leaks(exception_texts(outer)) and chain_links(outer) == [outer, middle, driver]


# -- PostgreSQL ----------------------------------------------------------------


def _with_password(database_url: str, **changes: Any) -> str:
    """``database_url`` as a URL that carries the planted password (trust auth ignores it)."""
    params = conninfo_to_dict(database_url) | changes
    return (
        f"postgresql://{params['user']}:{DB_PASSWORD}@{params['host']}:{params['port']}"
        f"/{params['dbname']}"
    )


def test_an_unreachable_database_names_it_without_the_password(watched, database_url) -> None:
    url = _with_password(database_url, port=CLOSED_PORT)
    settings = load_settings(
        database_url=url, pool_min_size=0, pool_timeout=1.0, connect_timeout=1.0
    )

    def use() -> None:
        with Database(settings) as db, db.connection() as conn:
            conn.execute("SELECT 1")

    failures = [raised(use, ToolkitError), raised(lambda: migrate(url), ToolkitError)]
    watched(*failures)


def test_a_missing_database_names_it_without_the_password(watched, database_url) -> None:
    url = _with_password(database_url, dbname=f"missing_{uuid.uuid4().hex[:8]}")
    settings = load_settings(
        database_url=url, pool_min_size=0, pool_timeout=2.0, connect_timeout=2.0
    )

    def use() -> None:
        with Database(settings) as db, db.connection() as conn:
            conn.execute("SELECT 1")

    watched(raised(use, ToolkitError))


def test_a_duplicate_email_keeps_the_email_in_detail_only(watched, database_url, mode) -> None:
    """The Conflict's chain and traceback show no email; detail and driver_error keep it."""
    users_api = both("toolkit.repositories.users")
    settings = load_settings(database_url=_with_password(database_url), pool_min_size=0)
    database = both("toolkit.db.database").Database(settings, warn_if_privileged=False)
    second = {"email": EMAIL.upper(), "display_name": "Second"}
    with database as db:
        with db.connection() as conn:
            users_api.create(conn, {"email": EMAIL, "display_name": "First"})
            direct = raised(lambda: users_api.create(conn, second), Conflict)

        def in_a_transaction() -> None:
            with db.transaction() as tx:
                users_api.create(tx, second)

        transactional = raised(in_a_transaction, Conflict)
    for error in (direct, transactional):
        assert isinstance(error, ToolkitError) and error.detail is not None
        assert EMAIL in error.detail.lower()  # kept for debugging, off the message
        assert isinstance(error.driver_error, psycopg.errors.UniqueViolation)
        assert EMAIL in str(error.driver_error).lower()  # so it must be off the chain:
        assert error.__cause__ is None and error.__context__ is None
        assert EMAIL not in "".join(traceback.format_exception(error)).lower()
    watched(direct, transactional)


def test_a_stale_or_missing_agent_update_shows_none_of_its_config(watched, conn) -> None:
    agent = make_agent(conn)
    secret_config = {"model": "m", "system_prompt": f"use key {CONFIG_SECRET}"}
    stale = raised(
        lambda: agents.update(
            conn, agent.id, expected_version=agent.version + 5, config=secret_config
        ),
        StaleVersion,
    )
    missing = raised(
        lambda: agents.update(conn, uuid.uuid4(), expected_version=1, config=secret_config),
        NotFound,
    )
    watched(stale, missing)


def test_an_invalid_agent_update_shows_only_the_value_that_failed(watched, conn) -> None:
    agent = make_agent(conn)
    config = {"model": "m", "system_prompt": f"use key {CONFIG_SECRET}", "temperature": "hot"}
    invalid = raised(
        lambda: agents.update(conn, agent.id, expected_version=agent.version, config=config),
        InvalidInput,
    )
    assert "hot" in str(invalid)  # the value that failed is still named
    watched(invalid)


# -- Redis -----------------------------------------------------------------------


def _llm_request() -> dict[str, Any]:
    return {
        "model": "m",
        "temperature": 0,
        "api_key": API_KEY,
        "messages": [{"role": "user", "content": PROMPT}],
    }


@pytest.mark.parametrize("detect", [True, False], ids=["detector", "no-detector"])
@pytest.mark.parametrize("port", [CLOSED_PORT, 6379], ids=["unreachable", "reachable"])
def test_the_llm_cache_logs_no_prompt_key_or_password(watched, port: int, detect: bool) -> None:
    url = f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    # Without the detector the key-bearing request is stored too: every path runs.
    detector: dict[str, Any] = {} if detect else {"secret_detector": None}
    with CacheClient.from_url(url, namespace=f"leak{uuid.uuid4().hex[:8]}") as client:
        llm = LLMCache(client, cache_nondeterministic=True, **detector)
        plain = {k: v for k, v in _llm_request().items() if k != "api_key"}
        for request in (_llm_request(), plain):
            answer = llm.get_or_compute(request, lambda: f"answer to {PROMPT}")
            llm.set(request, "stored")
            llm.get(request)
            assert answer.response == f"answer to {PROMPT}"

        def failing_model() -> str:
            raise ValueError("the model failed")

        error = raised(lambda: llm.get_or_compute(plain | {"seed": 2}, failing_model), ValueError)
        stats = llm.stats()
        client.clear()  # leave nothing behind in the shared Redis
    assert (stats.errors > 0) == (port == CLOSED_PORT)
    watched(error, extra=[repr(client), repr(llm), repr(stats)])


# -- RabbitMQ --------------------------------------------------------------------


def _notification() -> NotificationSend:
    return NotificationSend(kind="leak-test", subject="hello", text="body")


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://guest:{AMQP_PASSWORD}@127.0.0.1:{CLOSED_PORT}/%2F",
        f"amqp://guest:{AMQP_PASSWORD}@127.0.0.1:5672/%2F",  # refused: wrong password
    ],
    ids=["unreachable", "bad-password"],
)
def test_the_publisher_and_relay_never_show_the_amqp_password(watched, db, url: str) -> None:
    topology = Topology(prefix=f"leak{uuid.uuid4().hex[:8]}.")
    with Publisher(url, topology) as publisher:
        published = raised(
            lambda: publisher.publish(_notification(), tenant=DEFAULT_TENANT), Unavailable
        )
    with db.transaction() as tx:
        outbox.enqueue(tx, _notification())
    with Relay(db, url, topology, listen=False) as relay:
        relayed = raised(relay.run_once, Unavailable)
    watched(published, relayed)


# -- storage ---------------------------------------------------------------------


def test_storage_failures_show_no_password(watched, tmp_path) -> None:
    bad_urls = [
        f"file://{tmp_path}?password={STORAGE_PASSWORD}",
        f"s3://?password={STORAGE_PASSWORD}",
        f"ftp://user:{STORAGE_PASSWORD}@host/x",
        f"memory://u:{STORAGE_PASSWORD}@x",
        f"memory://x?password={STORAGE_PASSWORD}",
        f"s3://u:{STORAGE_PASSWORD}@bucket",
        f"s3://u:{STORAGE_PASSWORD}/x@bucket",
        f"s3://bucket?endpoint=http://u:{STORAGE_PASSWORD}@minio:9000",
        f"file://u:{STORAGE_PASSWORD}@/path",
    ]
    failures = [raised(lambda u=u: open_storage(u), ConfigurationError) for u in bad_urls]
    with open_storage(f"file://{tmp_path}") as storage:
        failures.append(raised(lambda: storage.put("../escape", b"x"), InvalidInput))
        failures.append(raised(lambda: storage.get("missing/object"), NotFound))
    watched(*failures)


# -- passwords libpq reads differently from urllib ------------------------------

PW_HEAD, PW_TAIL = "pwHEAD", "pwTAIL"
"""Both halves of a planted password: neither may show, nor the whole."""

AWKWARD = ["#", "?", "@", "/", "%40", " ", "'", '"', "\\", "&"]
"""Characters that urllib or libpq treat specially, between the two halves of a password."""


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _awkward_url(form: str, character: str, dbname: str) -> str:
    """A conninfo for ``dbname`` on the test server carrying a password around ``character``."""
    secret = f"{PW_HEAD}{character}{PW_TAIL}"
    where = f"host=127.0.0.1 port=5432 user=postgres dbname={dbname}"
    return {
        "url": f"postgresql://postgres:{secret}@127.0.0.1:5432/{dbname}",
        "url-sslpassword": f"postgresql://postgres@127.0.0.1:5432/{dbname}?sslpassword={secret}",
        "conninfo-quoted": f"{where} password={_quoted(secret)}",
        "conninfo-bare": f"{where} password={secret} application_name=leaktest",
        "conninfo-sslpassword": f"{where} sslpassword={_quoted(secret)}",
    }[form]


def _password_leaks(texts: Iterable[str]) -> list[str]:
    return [text for text in texts if PW_HEAD in text or PW_TAIL in text]


def _shown_or_refused(show: Callable[[], object]) -> str:
    try:
        return str(show())
    except ToolkitError as error:
        return "\n".join(exception_texts(error))


FORMS = ["url", "url-sslpassword", "conninfo-quoted", "conninfo-bare", "conninfo-sslpassword"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("character", AWKWARD, ids=repr)
def test_no_password_shows_however_awkward(database_url, form: str, character: str) -> None:
    """Settings, masks, target names, a real failed connect and the CLI's line show no half.

    The server trusts local connections, so the password is never checked:
    the connection fails only on the missing database, as it would in
    production on the first use of a fresh deployment.
    """
    dbname = f"missing_{uuid.uuid4().hex[:8]}"
    url = _awkward_url(form, character, dbname)
    texts = [
        _shown_or_refused(lambda: repr(load_settings(database_url=url))),
        _shown_or_refused(lambda: describe_target(url)),
        _shown_or_refused(lambda: mask_conninfo(url)),
    ]
    try:
        settings = load_settings(database_url=url, pool_min_size=0, pool_timeout=2.0)
    except ConfigurationError as refused:
        texts += exception_texts(refused)
    else:

        def use() -> None:
            with Database(settings) as db, db.connection() as conn:
                conn.execute("SELECT 1")

        texts += exception_texts(raised(use, ToolkitError))
    done = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "verify"],
        env=os.environ | {"TOOLKIT_DATABASE_URL": url, "TOOLKIT_CONNECT_TIMEOUT": "2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert _password_leaks([*texts, done.stdout + done.stderr]) == []


# -- settings and the toolkit command -----------------------------------------


def _secret_environment(database_url: str, *, db_port: int | None = None) -> dict[str, str]:
    changes = {} if db_port is None else {"port": db_port}
    return {
        "TOOLKIT_DATABASE_URL": _with_password(database_url, **changes),
        "TOOLKIT_REDIS_URL": f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{CLOSED_PORT}/0",
        "TOOLKIT_AMQP_URL": f"amqp://guest:{AMQP_PASSWORD}@127.0.0.1:{CLOSED_PORT}/%2F",
        "TOOLKIT_CONNECT_TIMEOUT": "2",
        "TOOLKIT_POOL_TIMEOUT": "2",
    }


def test_settings_show_no_password(watched, database_url, monkeypatch) -> None:
    for name, value in _secret_environment(database_url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TOOLKIT_STORAGE_URL", f"s3://bucket?password={STORAGE_PASSWORD}")
    settings = load_settings()
    bad = raised(
        lambda: Database(
            load_settings(database_url=f"postgresql://u:{DB_PASSWORD}@h/d?bogus_option=1")
        ),
        ConfigurationError,
    )
    watched(bad, extra=[repr(settings), str(settings)])


CLI_COMMANDS = [
    ("migrate", "--status"),
    ("verify",),
    ("relay", "--once", "--no-listen"),
    ("storage", "sweep", "--storage-url", "memory://leaktest"),
    ("storage", "sweep", "--storage-url", f"memory://u:{STORAGE_PASSWORD}@leaktest"),
    ("audit", "verify"),
    ("demo",),
]


@pytest.mark.parametrize("db_reachable", [False, True], ids=["db-unreachable", "db-reachable"])
@pytest.mark.parametrize("command", CLI_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_the_toolkit_command_prints_no_secret(
    database_url, tmp_path, command: tuple[str, ...], db_reachable: bool
) -> None:
    environment = os.environ | _secret_environment(
        database_url, db_port=None if db_reachable else CLOSED_PORT
    )
    environment["TOOLKIT_STORAGE_URL"] = f"file://{tmp_path}"
    done = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "-v", *command],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert output.strip(), "the command said nothing, so the check would prove nothing"
    found = leaks([output])
    assert not found, f"toolkit {' '.join(command)} printed {[s for s, _ in found]}:\n{output}"


def test_psycopg_itself_never_quotes_the_password(database_url) -> None:
    """Driver messages reach tracebacks unfiltered: libpq must not quote the URL either."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(_with_password(database_url, port=CLOSED_PORT), connect_timeout=2)
    assert DB_PASSWORD not in str(info.value)
