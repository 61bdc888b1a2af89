"""Hostile input, fuzzed: hypothesis throws arguments at every public function
of every repository module, of the files repository and of the outbox and
inbox, through the sync API and (via tests/support/modes.py) the async one.

Each call mixes valid values (rows that exist in the test database, sane
numbers, well-formed text, from :func:`valid`) with hostile ones (from
:func:`hostile`): all valid, all valid but one, each at random, or all
hostile. So the calls reach the SQL as well as the checks, and the property
proves both halves:

* only the toolkit's documented exceptions escape, whatever the input;
* a rejected call leaves every table of the database exactly as it was
  (checksummed before and after); an accepted one may change it, and the
  next call is checked against the new state.

Each function's accepted and rejected calls are counted; a function with no
accepted call fails its module's test, since then the fuzz proved nothing
past input validation for it. The functions are found by inspecting the
modules, and their arguments are drawn from their signatures by parameter
name, so a new function is fuzzed without a change here;
:func:`test_every_public_function_is_fuzzed` fails if one cannot be, and the
count check fails if its parameters need a valid value this file cannot make.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import os
import pkgutil
import string
import sys
import typing
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import ModuleType
from typing import Any, Literal
from uuid import UUID

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import toolkit.repositories
from tests.reliability.conftest import FUZZ_COUNTS, render_fuzz_counts
from tests.support.modes import Mode, both, execute
from toolkit.db.patterns import Entity
from toolkit.errors import (
    Conflict,
    IllegalTransition,
    InvalidInput,
    InvalidReference,
    NotFound,
    StaleVersion,
)
from toolkit.messaging import inbox, outbox
from toolkit.messaging.consumer import Delivery
from toolkit.messaging.models import AuditLog, NotificationSend, WorkflowExecute
from toolkit.records import Page
from toolkit.repositories.records import (
    Agent,
    AgentCreate,
    AuditEvent,
    Checkpoint,
    Execution,
    Membership,
    Session,
    Tenant,
    User,
    Workflow,
)
from toolkit.storage import repository as files
from toolkit.storage.records import File
from toolkit.tenants import DEFAULT_TENANT

DOCUMENTED = (InvalidInput, NotFound, Conflict, InvalidReference, StaleVersion, IllegalTransition)
# tox -e reliability runs 300 examples a property; the default run 25.
EXAMPLES = int(os.environ.get("TOOLKIT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
    # The explain phase traces every line of the (database-bound) calls: minutes per failure.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
)
# The first parameter of every fuzzed function: what it runs on.
CONNECTION_PARAMETERS = ("conn", "tx", "db")


NOT_REPOSITORIES = frozenset({"records", "audit"})
"""Modules of toolkit.repositories with no functions on a connection: the entities'
records, and the Audit value a write takes (``audit=``)."""


def _repository_modules() -> list[ModuleType]:
    package = toolkit.repositories
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_") and info.name not in NOT_REPOSITORIES
    )
    return [getattr(package, name) for name in names]


FUZZED_MODULES = [*_repository_modules(), files, outbox, inbox]
# Modules whose functions the fuzz has shown to let other errors escape; fixing
# them is outside the repositories. Strict: the mark fails once they are fixed.
KNOWN_UNGUARDED: dict[str, str] = {}
"""Modules whose functions still let a non-toolkit error escape, with why (none today)."""


def _fuzz_cases() -> list[Any]:
    return [
        pytest.param(
            module,
            id=module.__name__,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_UNGUARDED[module.__name__])]
            if module.__name__ in KNOWN_UNGUARDED
            else [],
        )
        for module in FUZZED_MODULES
    ]


def public_functions(module: ModuleType) -> list[Callable[..., Any]]:
    """The functions a caller of ``module`` may call: defined there, or the module's
    operations from ``toolkit.db.patterns.Entity`` (``get = _entity.get``); not private."""

    def offered(name: str, member: Any) -> bool:
        if name.startswith("_"):
            return False
        if inspect.isfunction(member):
            return bool(member.__module__ == module.__name__)
        return inspect.ismethod(member) and isinstance(member.__self__, Entity)

    return [member for name, member in inspect.getmembers(module) if offered(name, member)]


# Values


def nested(depth: int, kind: str, leaf: Any) -> Any:
    """``leaf`` inside ``depth`` dicts and/or lists, built without recursion."""
    value = leaf
    for level in range(depth):
        as_dict = kind == "dict" or (kind == "mixed" and level % 2 == 0)
        value = {"k": value} if as_dict else [value]
    return value


hostile_text = st.one_of(
    # Any code point, lone surrogates and NUL included.
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=50),
    st.sampled_from(["", "\x00", "\ud800", "a\x00b", "'; DROP TABLE users; --"]),
    # Mapped, not listed: hypothesis reprs a strategy's literals, each time one is built.
    st.just(100_000).map("x".__mul__),
)
odd_numbers = st.one_of(
    st.sampled_from(
        [
            2**31,
            -(2**31) - 1,
            2**63,
            2**64,
            -(2**63) - 1,
            math.nan,
            math.inf,
            -math.inf,
            -0.0,
            5e-324,
            1.7976931348623157e308,
            Decimal("NaN"),
            Decimal("-0"),
            Decimal("1E+999999"),
            Decimal("0.1"),
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
    # More than 4300 digits: repr() and str() of these raise ValueError. Built by map,
    # since hypothesis itself reprs the elements of sampled_from.
    st.integers(min_value=4301, max_value=6000).map(lambda digits: 10**digits),
    st.integers(min_value=4301, max_value=6000).map(lambda digits: -(10**digits)),
    st.floats(),
    st.decimals(),
)
limit = sys.getrecursionlimit()
# Deeper than the interpreter can recurse: a recursive repr, dump or walk fails on these.
too_deep = st.builds(
    nested,
    depth=st.integers(min_value=limit + 1, max_value=5 * limit),
    kind=st.sampled_from(["dict", "list", "mixed"]),
    leaf=st.sampled_from([None, 1, "x", {}]),
)
json_values = st.recursive(
    st.none() | st.booleans() | odd_numbers | hostile_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=20,
)
anything = st.one_of(
    hostile_text,
    odd_numbers,
    st.none(),
    st.booleans(),
    st.uuids(),
    st.uuids().map(str),
    st.binary(max_size=20),
    json_values,
    too_deep,
)
json_like = st.one_of(json_values, too_deep, st.dictionaries(hostile_text, too_deep, max_size=2))


def messages(ids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid message models (built through validation, so construction itself is not fuzzed)."""
    return st.one_of(
        st.builds(WorkflowExecute, execution_id=st.uuids(), workflow_id=ids),
        st.builds(
            NotificationSend,
            kind=st.just("k"),
            subject=st.just("s"),
            # Keys of storable text (NUL is refused on construction, not by the outbox).
            data=st.dictionaries(
                st.text(alphabet=string.ascii_letters, max_size=5), st.integers(), max_size=3
            ),
        ),
        st.builds(AuditLog, action=st.just("a.b"), entity=st.just("x")),
    )


def plausible(name: str, annotation: Any, ids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value that could be right for a parameter or field called ``name``."""
    model = _model_in(annotation)
    if name.endswith(("_id", "id")):
        return ids
    if name.endswith(("_ids", "ids")):
        return st.lists(ids, max_size=3)
    if name == "email":
        return st.emails()
    if name in ("config", "definition", "input", "output", "state", "details", "metadata"):
        return json_like
    if name in ("retention",):
        return st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
    if name == "message":
        return messages(ids)
    if name == "messages":
        return st.lists(messages(ids), max_size=3)
    if model is not None:
        return payloads(model, ids)
    return hostile_text


def hostile(name: str, annotation: Any, ids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value chosen by the parameter's name to be nearly right, or anything at all."""
    return plausible(name, annotation, ids) | anything


def payloads(model: type[BaseModel], ids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Dicts with the model's fields (each plausible or hostile) and sometimes stray keys."""
    known = st.fixed_dictionaries(
        {},
        optional={
            field: hostile(field, info.annotation, ids)
            for field, info in model.model_fields.items()
        },
    )
    stray = st.dictionaries(hostile_text, anything, max_size=2)
    combined = st.tuples(known, stray | st.just({})).map(lambda pair: {**pair[1], **pair[0]})
    return combined | st.lists(combined, max_size=2)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation names (``AgentCreate | Mapping[...]``), if any."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        inner = typing.get_args(candidate)
        if inner and _model_in(inner[0]) is not None:
            return _model_in(inner[0])
    return None


def call_plan(function: Callable[..., Any]) -> tuple[str, dict[str, inspect.Parameter]]:
    """The connection parameter's name and the other parameters of ``function``; the
    keywords of ``**arguments: Unpack[AgentUpdate]`` (an update's) each as one of them."""
    parameters = dict(inspect.signature(function).parameters)
    first = next(iter(parameters))
    del parameters[first]
    for name, typed in _unpacked(function).items():
        del parameters[name]
        for key, annotation in typing.get_type_hints(typed, include_extras=True).items():
            required = typing.get_origin(annotation) is typing.Required or (
                typed.__total__ and typing.get_origin(annotation) is not typing.NotRequired
            )
            default = inspect.Parameter.empty if required else None
            parameters[key] = inspect.Parameter(
                key, inspect.Parameter.KEYWORD_ONLY, default=default
            )
    return first, parameters


def _unpacked(function: Callable[..., Any]) -> dict[str, Any]:
    """The ``**name: Unpack[SomeTypedDict]`` parameter of ``function``, if any, by name."""
    return {
        name: typing.get_args(hint)[0]
        for name, hint in _resolved_hints(function).items()
        if typing.get_origin(hint) is typing.Unpack
    }


def type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The parameters' annotations, resolved where the module can resolve them, with
    those of the keywords an ``Unpack``ed TypedDict declares (see :func:`call_plan`).

    A name imported only for type checking stays unresolved (None): its
    parameter is still fuzzed, with values chosen by its name.
    """
    hints = _resolved_hints(function)
    for typed in _unpacked(function).values():
        hints.update(typing.get_type_hints(typed))
    return hints


def _resolved_hints(function: Callable[..., Any]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for name, annotation in inspect.get_annotations(function).items():
        try:
            hints[name] = (
                eval(annotation, function.__globals__)
                if isinstance(annotation, str)
                else annotation
            )
        except NameError:
            hints[name] = None
    return hints


# Valid values: what exists in the database, and what a careful caller passes

RECORD_KINDS: dict[type, str] = {
    User: "user",
    Agent: "agent",
    Workflow: "workflow",
    Execution: "execution",
    Session: "session",
    Checkpoint: "checkpoint",
    AuditEvent: "audit_event",
    File: "file",
    Tenant: "tenant",
}
MODULE_KINDS = {
    "users": "user",
    "agents": "agent",
    "workflows": "workflow",
    "executions": "execution",
    "sessions": "session",
    "checkpoints": "checkpoint",
    "audit_events": "audit_event",
    "repository": "file",
    "outbox": "outbox",
    "inbox": "inbox",
    "tenants": "tenant",
    "memberships": "membership",
}
"""The kind of row a module's own id parameters (``entity_id``, ``file_id``...) name."""
ID_KINDS = {
    "user_id": "user",
    "owner_id": "user",
    "actor_id": "user",
    "agent_id": "agent",
    "workflow_id": "workflow",
    "execution_id": "execution",
    "session_id": "session",
    "checkpoint_id": "checkpoint",
    "file_id": "file",
    "tenant_id": "tenant",
}
WORKER = "fuzz-worker"
OUTSIDER, MEMBER = "outsider", "member"
"""The users memberships.add and .remove take: outsiders have no membership in the
connection's tenant; members are kept for removal and own nothing, so removing one deletes
no row the fuzz knows of (their ids are never drawn as an owner's)."""


def _live(session: Session) -> bool:
    return session.ended_at is None and session.expires_at > datetime.now(UTC)


# Which rows a function can act on, for the ids its valid calls pass.
NEEDS: dict[tuple[str, str], Callable[[Any], bool]] = {
    ("executions", "start"): lambda e: e.status == "pending",
    ("executions", "cancel"): lambda e: e.status in ("pending", "running"),
    ("executions", "renew_lease"): lambda e: e.status == "running" and e.worker_id == WORKER,
    ("executions", "succeed"): lambda e: e.status == "running",
    ("executions", "fail"): lambda e: e.status == "running",
    ("workflows", "publish"): lambda w: w.status == "draft",
    ("workflows", "archive"): lambda w: w.status != "archived",
    ("sessions", "end"): _live,
    ("sessions", "touch"): _live,
    ("sessions", "update"): _live,
    ("repository", "mark_stored"): lambda f: f.status == "staged",
}


class World:
    """The rows of the test database valid values point at, as the calls last returned them.

    Seeded by the ``targets`` fixture and fed by every accepted call's result,
    so a row created by one call is used by the next; a row an accepted
    ``delete`` removed is forgotten.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[UUID, Any]] = defaultdict(dict)

    def learn(self, value: Any, kind: str | None = None) -> None:
        """Remember the rows in a result (a record, a page or list of them, an id)."""
        if isinstance(value, Page):
            value = value.items
        if isinstance(value, list):
            for item in value:
                self.learn(item, kind)
            return
        found = RECORD_KINDS.get(type(value))
        if found is not None:
            self.rows[found].pop(value.id, None)  # re-inserted: the newest last
            self.rows[found][value.id] = value
        elif isinstance(value, Membership) and value.user_id in self.rows[OUTSIDER]:
            self.joined(value.user_id)
        elif isinstance(value, UUID) and kind is not None:
            self.rows[kind][value] = None

    def forget(self, kind: str, key: Any) -> None:
        if isinstance(key, (UUID, str)):
            with contextlib.suppress(ValueError):
                self.rows[kind].pop(UUID(str(key)), None)

    def gone(self, function: str, kind: str, key: Any) -> None:
        """After a call of ``function`` given ``key`` first: forget the row a delete may have
        removed; a membership's remove (accepted) made the user an outsider."""
        if function == "delete":
            self.forget(kind, key)
        elif function == "remove" and isinstance(key, (UUID, str)):
            with contextlib.suppress(ValueError):
                self.left(UUID(str(key)))

    def joined(self, user: UUID) -> None:
        """``user`` is a member of the connection's tenant now, one memberships.remove takes."""
        self.rows[OUTSIDER].pop(user, None)
        self.rows[MEMBER][user] = None

    def left(self, user: UUID) -> None:
        """``user`` has no membership in the connection's tenant now, one memberships.add
        takes (nor owns rows there: never an owner the seeder uses again)."""
        self.forget("user", user)
        self.forget(MEMBER, user)
        self.rows[OUTSIDER][user] = None

    def ids(self, kind: str, need: Callable[[Any], bool] | None = None) -> st.SearchStrategy[UUID]:
        """One of the newest ids of ``kind`` (of rows ``need`` accepts); a fresh UUID if none."""
        known = [
            key
            for key, row in reversed(self.rows[kind].items())
            if need is None or (row is not None and need(row))
        ][:6]
        return known_or(known, st.uuids())

    def any_ids(self) -> st.SearchStrategy[UUID]:
        """Any known id of any kind, or a random one (the hostile values' ids)."""
        known = [key for rows in self.rows.values() for key in list(rows)[-3:]]
        return known_or(known, st.uuids(), sometimes_fresh=True)

    def version(self, kind: str, key: Any) -> int:
        row = self.rows[kind].get(key) if isinstance(key, UUID) else None
        return int(getattr(row, "version", 1))

    def values(self, kind: str, attribute: str) -> list[Any]:
        return [getattr(row, attribute) for row in list(self.rows[kind].values())[-6:] if row]


def known_or(
    known: list[Any], fresh: st.SearchStrategy[Any], *, sometimes_fresh: bool = False
) -> st.SearchStrategy[Any]:
    """One of ``known`` (or, when empty or ``sometimes_fresh`` says so, a ``fresh`` value).

    Drawn in the same shape however many are known: hypothesis requires the
    choices a draw makes not to depend on outside state (the database's rows).
    """

    def choose(drawn: tuple[int, bool, Any]) -> Any:
        index, take_fresh, new = drawn
        if not known or (sometimes_fresh and take_fresh):
            return new
        return known[index % len(known)]

    return st.tuples(st.integers(0, 63), st.booleans(), fresh).map(choose)


word = st.text(alphabet=string.ascii_letters, min_size=1, max_size=12)
slug = st.sampled_from(["assistant", "tool", "router", "fuzz_agent"])
json_object = st.dictionaries(
    word, st.integers(-1000, 1000) | word | st.booleans() | st.none(), max_size=3
)
FUZZ_CREATED = datetime.now(UTC).replace(microsecond=0)
"""A message's creation time within the partitions the inbox keeps."""

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "email": st.uuids().map(lambda u: f"fz-{u.hex[:16]}@example.com"),
    "display_name": word,
    "name": word,
    "title": st.none() | word,
    "description": st.none() | word,
    "type": slug,
    "agent_type": slug,
    "password_hash": st.none() | word,
    "config": st.fixed_dictionaries(
        {},
        optional={
            "model": word,
            "temperature": st.floats(0, 2),
            "max_tokens": st.integers(1, 1000),
            "tools": st.lists(word, max_size=2),
        },
    ),
    "definition": st.lists(st.fixed_dictionaries({"name": word, "action": word}), max_size=2).map(
        lambda steps: {"steps": steps}
    ),
    "input": json_object,
    "state": json_object,
    "details": json_object,
    "metadata": st.just({}),
    "output": st.none() | json_object,
    "error": word,
    "sequence": st.integers(0, 1000),
    "after_sequence": st.integers(-1, 1000),
    "keep": st.integers(1, 10),
    "parent_id": st.none(),
    "ttl_seconds": st.integers(60, 86400),
    "action": st.sampled_from(["fuzz.tested", "user.created"]),
    "entity": st.sampled_from(["user", "fuzz"]),
    "limit": st.integers(1, 100),
    "sort": st.just("created_at"),
    "descending": st.booleans(),
    "cursor": st.none(),
    "text": word,
    "worker_id": st.just(WORKER),
    "lease_seconds": st.integers(60, 600) | st.floats(60, 600),
    "grace_seconds": st.integers(0, 3600) | st.floats(0, 3600),
    "headers": st.none()
    | st.dictionaries(word, st.integers(-1000, 1000) | word | st.booleans(), max_size=3),
    "max_message_bytes": st.integers(1 << 12, 1 << 20),
    "retention": st.timedeltas(timedelta(0), timedelta(days=30)),
    "consumer": st.sampled_from(["fuzz.consumer", "billing"]),
    # A creation time the inbox keeps (and, for a repeated message_id, its first one or not).
    "created_at": st.sampled_from([FUZZ_CREATED, FUZZ_CREATED - timedelta(hours=1)]),
    "queue": st.just("q.fuzz"),
    "key": st.uuids().map(lambda u: f"fuzz/{u.hex}.txt"),
    "original_name": st.none() | word,
    "size": st.integers(0, 10**6),
    "content_type": st.just("text/plain"),
    "claimed_type": st.none() | st.just("text/plain"),
    "sha256": st.binary(max_size=8).map(lambda b: hashlib.sha256(b).hexdigest()),
    "after_user_id": st.none() | st.uuids(),
}
"""Valid values by parameter (or model field) name; ids and payloads are drawn by :func:`valid`."""


def apply_nothing(tx: Any, delivery: Any) -> None:
    """A valid ``apply`` for ``inbox.transactional``."""


@dataclass
class Call:
    """What drawing one call needs to know: the function, the rows, what is drawn so far."""

    world: World
    module: str
    function: str
    entity: Entity[Any, Any] | None
    drawn: dict[str, Any] = field(default_factory=dict)

    @property
    def own_kind(self) -> str:
        return MODULE_KINDS[self.module]

    @property
    def create_model(self) -> type[BaseModel] | None:
        """The create model of the function's module (its updates take the same fields)."""
        module = next(m for m in FUZZED_MODULES if m.__name__.endswith(f".{self.module}"))
        entity = getattr(module, "_entity", None)
        return entity.create_model if isinstance(entity, Entity) else None

    @property
    def need(self) -> Callable[[Any], bool] | None:
        return NEEDS.get((self.module, self.function))


def _choices(annotation: Any) -> list[st.SearchStrategy[Any]]:
    """Values an annotation itself names: its literals, bool, None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _choices(typing.get_args(annotation)[0])
    if origin is Literal:
        return [st.sampled_from(typing.get_args(annotation))]
    if annotation is bool:
        return [st.booleans()]
    if annotation is type(None):
        return [st.none()]
    return [choice for arg in typing.get_args(annotation) for choice in _choices(arg)]


def valid(name: str, annotation: Any, call: Call, *, in_model: bool = False) -> Any:
    """A value a careful caller would pass for a parameter (or model field) ``name``."""
    world = call.world
    if name == "entity_id" and not in_model:
        return world.ids(call.own_kind, call.need)
    if name == "entity_id":  # an audit event's subject: any id, or none
        return st.none() | st.uuids()
    if name == "message_id":
        if call.module == "outbox" and call.function == "get":
            return world.ids("outbox")
        if call.module == "outbox":
            return st.none() | st.uuids()
        return st.uuids() | world.ids("inbox")  # a first delivery, or a repeated one
    if name == "id" and in_model:
        return st.uuids()
    if call.module == "memberships" and name == "user_id":
        return world.ids(OUTSIDER if call.function == "add" else MEMBER)
    if name in ID_KINDS:
        kind = ID_KINDS[name]
        ids = world.ids(kind, call.need if kind == call.own_kind else None)
        optional = in_model and type(None) in typing.get_args(annotation)
        return st.none() | ids if optional else ids
    if name in ("data", "values", "filters"):
        model = _model_in(annotation)
        if call.entity is not None:
            model = call.entity.filters if name == "filters" else call.entity.create_model
        assert model is not None, f"{call.module}.{call.function}({name}): no model"
        payload = payloads_of(model, call, all_optional=name == "filters")
        return st.none() | payload if name == "filters" else payload
    if name == "agents":
        return st.lists(payloads_of(AgentCreate, call), max_size=3)
    if name == "file_ids":
        return st.lists(world.ids("file"), max_size=3)
    if name == "keys":
        return st.lists(known_or(world.values("file", "key"), VALUES["key"]), max_size=3)
    if name == "email" and call.function in ("get_by_email", "get_credentials"):
        return known_or(world.values("user", "email"), VALUES["email"], sometimes_fresh=True)
    if name == "expected_version":
        key = next((v for k, v in call.drawn.items() if k.endswith("id")), None)
        return st.just(world.version(call.own_kind, key))
    if name == "message":
        return messages(world.ids("workflow"))
    if name == "messages":
        return st.lists(messages(world.ids("workflow")), max_size=3)
    if name == "apply":
        return st.just(apply_nothing)
    if name == "delivery":
        return st.builds(
            Delivery,
            queue=st.just("q.fuzz"),
            message=messages(world.ids("workflow")),
            message_id=st.uuids() | world.ids("inbox"),
            tenant=st.just(DEFAULT_TENANT),
            retry_count=st.just(0),
            redelivered=st.booleans(),
            headers=st.just({}),
            created_at=st.none() | st.just(FUZZ_CREATED),
        )
    if name in VALUES:
        return VALUES[name]
    fields = call.create_model.model_fields if call.create_model is not None else {}
    if name in fields and not in_model:  # an update's field: valid as its create model says
        annotation = fields[name].annotation
    choices = _choices(annotation)
    assert choices, f"{call.module}.{call.function}: no valid value for {name!r} ({annotation})"
    return st.one_of(choices)


def payloads_of(
    model: type[BaseModel], call: Call, *, all_optional: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    """Valid dicts for ``model``: its required fields, and some of its optional ones."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        target = optional if all_optional or not info.is_required() else required
        target[name] = valid(name, info.annotation, call, in_model=True)
    return st.fixed_dictionaries(required, optional=optional)


# One call: every parameter valid, all but one, each at random, or none.
INTENTS = ("valid", "valid", "valid", "all but one", "mixed", "hostile")


def draw_call(
    data: st.DataObject,
    function: Callable[..., Any],
    call: Call,
    intents: tuple[str, ...] = INTENTS,
) -> tuple[list[Any], dict[str, Any]]:
    """Arguments for ``function`` drawn from its signature; optional ones sometimes left out.

    ``intents``: the kinds of call to choose from (``("valid",)``: valid arguments only).
    """
    hints = type_hints(function)
    parameters = call_plan(function)[1]
    label = f"{call.module}.{call.function}"
    intent = data.draw(st.sampled_from(intents), label=f"{label}: intent") if parameters else ""
    odd_one = (
        data.draw(st.sampled_from(sorted(parameters)), label=f"{label}: hostile parameter")
        if intent == "all but one"
        else None
    )
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for name, parameter in parameters.items():
        optional = parameter.default is not inspect.Parameter.empty
        if optional and name != odd_one and data.draw(st.booleans(), label=f"{label}: omit {name}"):
            continue
        annotation = hints.get(name)
        if intent == "valid" or (intent == "all but one" and name != odd_one):
            strategy = valid(name, annotation, call)
        elif intent == "mixed":
            strategy = valid(name, annotation, call) | hostile(
                name, annotation, call.world.any_ids()
            )
        else:
            strategy = hostile(name, annotation, call.world.any_ids())
        value = data.draw(strategy, label=f"{label}({name})")
        call.drawn[name] = value
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            keywords[name] = value
        else:
            positional.append(value)
    return positional, keywords


# Every table's checksum


def _rows(conn: Any, query: str, mode: Mode | None) -> list[tuple[Any, ...]]:
    """All rows of ``query`` on a sync connection, or an async one in an async run."""
    cursor = execute(conn, query)
    return list(mode.run(cursor.fetchall()) if mode is not None else cursor.fetchall())


def fingerprint(conn: Any, mode: Mode | None = None) -> dict[str, tuple[int, str]]:
    """Row count and a checksum of the content of every table of the database.

    The checksum adds a 64-bit hash of each row's text: independent of row
    order, so no sort is needed, and any change of any row changes it.
    """
    tables = _rows(
        conn,
        "SELECT schemaname, tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
        mode,
    )
    assert tables, "no tables found: the fingerprint would prove nothing"
    parts = [
        f"SELECT '{schema}.{table}', count(*), "
        f"coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text "
        f'FROM "{schema}"."{table}" AS t'
        for schema, table in tables
    ]
    rows = _rows(conn, " UNION ALL ".join(parts), mode)
    return {name: (count, digest) for name, count, digest in rows}


def next_transaction_id(conn: Any, mode: Mode) -> int:
    """The cluster's next transaction id: it moves whenever any statement anywhere writes
    (or tries to), so when it has not moved, no table has changed."""
    return int(_rows(conn, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text", mode)[0][0])


class Checked:
    """Calls under watch: a rejected one must leave every table as it was.

    Every table is checksummed before a call (again only once a call may have
    written) and after a rejected one, to compare. A call during which no
    transaction id was assigned anywhere wrote nothing: its checksums are
    skipped, so the many calls refused before any SQL cost one cheap query.
    """

    def __init__(self, conn: Any, mode: Mode) -> None:
        self.conn = conn
        self.mode = mode
        self.before: dict[str, tuple[int, str]] | None = None
        self.checksums = 0
        self.accepted = False
        """Whether the last :meth:`call` was accepted."""

    def _fingerprint(self) -> dict[str, tuple[int, str]]:
        self.checksums += 1
        return fingerprint(self.conn, self.mode)

    def attempt(
        self, label: str, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[bool, Any]:
        """(True, the result) of an accepted call; (False, the error) of a rejected one."""
        if self.before is None:
            self.before = self._fingerprint()
        marker = next_transaction_id(self.conn, self.mode)
        try:
            result = function(*args, **kwargs)
        except DOCUMENTED as error:
            if next_transaction_id(self.conn, self.mode) != marker:
                after = self._fingerprint()
                changed = sorted(name for name in after if after[name] != self.before.get(name))
                assert not changed, f"{label} was rejected but changed {changed}"
            return False, error
        # Any other exception escapes and fails the property.
        if next_transaction_id(self.conn, self.mode) != marker:
            self.before = None  # the call may have changed the database
        return True, result

    def call(self, label: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The result of an accepted call, None for a rejected one; counted under ``label``."""
        accepted, outcome = self.attempt(label, function, *args, **kwargs)
        FUZZ_COUNTS[(self.mode.name, label)][0 if accepted else 1] += 1
        self.accepted = accepted
        return outcome if accepted else None


class Seeder:
    """Creates the rows valid calls act on, and keeps at least two of each kind (in each
    state a transition starts from), since delete, end, publish, start... consume them."""

    def __init__(self, conn: Any, world: World) -> None:
        self.conn = conn
        self.world = world

    def _make(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        made = getattr(both(module), function)(self.conn, *args, **kwargs)
        self.world.learn(made, MODULE_KINDS[module.rsplit(".", 1)[-1]])
        return made

    def _newest(self, kind: str) -> UUID:
        return next(reversed(self.world.rows[kind]))

    def _short(self, kind: str, need: Callable[[Any], bool] | None = None) -> bool:
        rows = self.world.rows[kind].values()
        return sum(1 for row in rows if need is None or (row is not None and need(row))) < 2

    def top_up(self) -> bool:
        """Create what is missing; True if anything was (the database changed)."""
        repositories = "toolkit.repositories."
        n = uuid.uuid4().hex[:12]
        made = False
        while self._short("user"):
            self._make(
                repositories + "users",
                "create",
                {"email": f"fz-{n}@example.com", "display_name": n},
            )
            n, made = uuid.uuid4().hex[:12], True
        while self._short("agent"):
            agent = {"owner_id": self._newest("user"), "name": n, "type": "assistant"}
            self._make(repositories + "agents", "create", agent)
            made = True
        for need in (None, NEEDS[("workflows", "publish")]):
            while self._short("workflow", need):
                workflow = {"owner_id": self._newest("user"), "name": n}
                self._make(repositories + "workflows", "create", workflow)
                made = True
        for need in (None, NEEDS[("executions", "start")], NEEDS[("executions", "renew_lease")]):
            while self._short("execution", need):
                execution = self._make(
                    repositories + "executions", "create", {"workflow_id": self._newest("workflow")}
                )
                if need is NEEDS[("executions", "renew_lease")]:
                    self._make(repositories + "executions", "start", execution.id, worker_id=WORKER)
                made = True
        while self._short("session", _live):
            session = {"user_id": self._newest("user"), "agent_id": self._newest("agent")}
            self._make(repositories + "sessions", "create", session)
            made = True
        while self._short("checkpoint"):
            checkpoint = {
                "execution_id": self._newest("execution"),
                "sequence": uuid.uuid4().int % 2**31,  # a new one: appending is idempotent
                "state": {},
            }
            self._make(repositories + "checkpoints", "append", checkpoint)
            made = True
        while self._short("file", NEEDS[("repository", "mark_stored")]):
            file = {
                "id": uuid.uuid4(),
                "owner_id": self._newest("user"),
                "purpose": "attachment",
                "key": f"fuzz/{uuid.uuid4().hex}.txt",
                "size": 0,
                "content_type": "text/plain",
                "sha256": hashlib.sha256(b"").hexdigest(),
            }
            self._make("toolkit.storage.repository", "create", file)
            made = True
        while self._short("outbox"):
            self._make(
                "toolkit.messaging.outbox", "enqueue", NotificationSend(kind="k", subject="s")
            )
            made = True
        for kind in (MEMBER, OUTSIDER):  # new users (an outsider: then out of the tenant)
            while self._short(kind):
                n = uuid.uuid4().hex[:12]
                user = both(repositories + "users").create(
                    self.conn, {"email": f"fz-{n}@example.com", "display_name": n}
                )
                if kind == OUTSIDER:
                    both(repositories + "memberships").remove(self.conn, user.id)
                    self.world.left(user.id)
                else:
                    self.world.joined(user.id)
                made = True
        if not self.world.rows["tenant"]:  # the tenants the connection sees (its own, as a tenant)
            self.world.learn(both(repositories + "tenants").list(self.conn))
        return made


@pytest.fixture
def targets(conn: Any, db: Any) -> Iterator[dict[str, Any]]:
    """The rows valid values point at, and the objects a first parameter may need."""
    world = World()
    seeder = Seeder(conn, world)
    seeder.top_up()
    world.learn(both("toolkit.repositories.audit_events").list(conn, limit=8))
    yield {"conn": conn, "tx": conn, "db": db, "world": world, "seeder": seeder}


def _check_every_function_accepted(mode: Mode, module: ModuleType) -> None:
    short = module.__name__.rsplit(".", 1)[-1]
    labels = [f"{short}.{f.__name__}" for f in public_functions(module)]
    never = [label for label in labels if FUZZ_COUNTS[(mode.name, label)][0] == 0]
    assert not never, (
        f"no accepted call in {EXAMPLES} examples [{mode.name}] for {never}: the fuzz proved "
        "nothing past input validation for them; give their parameters valid values\n"
        + render_fuzz_counts({k: v for k, v in FUZZ_COUNTS.items() if k[1] in labels})
    )


@pytest.mark.parametrize("module", _fuzz_cases())
def test_every_function_rejects_hostile_input_cleanly(
    mode: Mode, targets: dict[str, Any], module: ModuleType
) -> None:
    short = module.__name__.rsplit(".", 1)[-1]
    api = both(module.__name__)  # the module itself, or its async twin driven through sync calls
    world: World = targets["world"]
    checked = Checked(targets["conn"], mode)

    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        if targets["seeder"].top_up():
            checked.before = None  # rows were added: checksum afresh
        functions = data.draw(st.permutations(public_functions(module)), label="order")
        for function in functions:
            name = function.__name__
            first, _ = call_plan(function)
            entity = function.__self__ if inspect.ismethod(function) else None
            call = Call(world, short, name, entity)
            args, kwargs = draw_call(data, function, call)
            result = checked.call(
                f"{short}.{name}", getattr(api, name), targets[first], *args, **kwargs
            )
            if checked.accepted or name == "delete":  # a refused delete: the row may be gone
                world.gone(name, call.own_kind, (args or [None])[0])
            if result is not None:
                world.learn(result, call.own_kind)

    run()
    _check_every_function_accepted(mode, module)


NON_FINITE = [
    Decimal("sNaN"),
    Decimal("-sNaN"),
    Decimal("NaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    math.nan,
    math.inf,
    -math.inf,
]
NOT_WHOLE = [*NON_FINITE, True, False, Decimal("1"), 1.0, "1"]


def _numeric_parameters(function: Callable[..., Any]) -> dict[str, type]:
    """The parameters annotated ``int`` or ``float`` (alone or with None), by name."""
    found: dict[str, type] = {}
    for name, annotation in type_hints(function).items():
        options = {annotation, *typing.get_args(annotation)} - {type(None)}
        if options & {int, float} and name != "return":
            found[name] = float if float in options else int
    return found


def _refuse_numbers(
    data: st.DataObject,
    module: ModuleType,
    function: Callable[..., Any],
    targets: dict[str, Any],
    checked: Checked,
) -> list[str]:
    """Call ``function`` with valid arguments but one numeric parameter not a number it
    takes, for each such parameter and value; each call must raise InvalidInput."""
    numeric = _numeric_parameters(function)
    short, name = module.__name__.rsplit(".", 1)[-1], function.__name__
    first, parameters = call_plan(function)
    hints = type_hints(function)
    entity = function.__self__ if inspect.ismethod(function) else None
    call = Call(targets["world"], short, name, entity)
    arguments: dict[str, Any] = {}
    for parameter in parameters:
        arguments[parameter] = data.draw(valid(parameter, hints.get(parameter), call))
        call.drawn[parameter] = arguments[parameter]
    tried = []
    for parameter, kind in numeric.items():
        for bad in NOT_WHOLE if kind is int else [*NON_FINITE, True]:
            label = f"{short}.{name}({parameter}={bad!r})"
            given_args = {**arguments, parameter: bad}
            positional = [
                given_args[p]
                for p, spec in parameters.items()
                if spec.kind is not inspect.Parameter.KEYWORD_ONLY
            ]
            keywords = {
                p: given_args[p]
                for p, spec in parameters.items()
                if spec.kind is inspect.Parameter.KEYWORD_ONLY
            }
            accepted, outcome = checked.attempt(
                label, getattr(both(module.__name__), name), targets[first], *positional, **keywords
            )
            assert not accepted and isinstance(outcome, InvalidInput), (
                f"{label} [{checked.mode.name}]: "
                + ("accepted" if accepted else f"raised {outcome!r}")
            )
            tried.append(label)
    return tried


def test_numeric_parameters_refuse_nan_infinity_and_bool(
    mode: Mode, targets: dict[str, Any]
) -> None:
    """Every int parameter of every fuzzed function (sync and async) refuses NaN, sNaN and
    infinite floats and Decimals, bool, and numbers of other types with InvalidInput, the
    other arguments valid; every float parameter refuses the non-finite ones and bool.
    The database is unchanged by each refusal."""
    checked = Checked(targets["conn"], mode)
    tried: list[str] = []

    @settings(max_examples=1, deadline=None, database=None, phases=(Phase.generate,))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        tried.clear()
        for module in FUZZED_MODULES:
            for function in public_functions(module):
                tried.extend(_refuse_numbers(data, module, function, targets, checked))

    run()
    parameters = {label.split("=")[0] for label in tried}
    assert len(parameters) >= 20, sorted(parameters)  # limits, sequences, versions, bytes...


@pytest.mark.parametrize(
    "queue", [{"k": None}, None, 5, b"q", "", "q\x00", "q" * 256, "\ud800"], ids=repr
)
def test_inbox_record_refuses_a_queue_that_is_not_a_queue_name(
    mode: Mode, targets: dict[str, Any], queue: Any
) -> None:
    """Found by the fuzz once calls were valid but for one argument: a dict for the
    queue reached the driver (DatabaseError); a number was stored as its text."""
    checked = Checked(targets["conn"], mode)
    accepted, outcome = checked.attempt(
        "inbox.record",
        both("toolkit.messaging.inbox").record,
        targets["conn"],
        "fuzz.consumer",
        uuid.uuid4(),
        queue,
        FUZZ_CREATED,
    )
    assert not accepted and isinstance(outcome, InvalidInput), outcome


def test_every_public_function_is_fuzzed() -> None:
    """Each module is in the fuzz list and each of its functions can be driven by it."""
    package_dir = os.path.dirname(toolkit.repositories.__file__)
    on_disk = {
        f"toolkit.repositories.{info.name}"
        for info in pkgutil.iter_modules([package_dir])
        if not info.name.startswith("_") and info.name not in NOT_REPOSITORIES
    }
    fuzzed = {module.__name__ for module in FUZZED_MODULES}
    assert on_disk <= fuzzed, f"repository modules not fuzzed: {sorted(on_disk - fuzzed)}"
    unfuzzable = []
    for module in FUZZED_MODULES:
        functions = public_functions(module)
        assert functions, f"{module.__name__} has no public functions: is it the right module?"
        for function in functions:
            first, parameters = call_plan(function)
            if first not in CONNECTION_PARAMETERS or any(
                p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values()
            ):
                unfuzzable.append(f"{module.__name__}.{function.__name__}")
    assert not unfuzzable, f"public functions the fuzz cannot call: {unfuzzable}"


@FUZZ
@given(value=st.one_of(too_deep, odd_numbers, hostile_text, json_values))
def test_bounded_repr_never_fails_and_stays_short(value: Any) -> None:
    from toolkit.errors import MAX_SHOWN, bounded_repr

    shown = bounded_repr(value)
    assert isinstance(shown, str)
    assert len(shown) <= MAX_SHOWN
    shown.encode("utf-8")  # printable: no lone surrogates
