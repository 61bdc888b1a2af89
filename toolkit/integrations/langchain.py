"""A LangChain LLM cache over :class:`toolkit.cache.LLMCache`.

Install: ``pip install 'agent-persistence-toolkit[langchain]'``.

:class:`ToolkitLLMCache` is a ``langchain_core.caches.BaseCache``: install
it with ``set_llm_cache`` and every LangChain model call looks up and
stores its generations through the toolkit's LLM cache, so it inherits
what that cache does:

* it fails open: with Redis down, slow or unreachable a lookup is a miss
  and an update is dropped, and the model call goes on (the circuit breaker
  keeps an outage from costing more than a timeout);
* keys are the canonical SHA-256 fingerprint of the whole request: the
  prompt (all messages, serialized by LangChain), the ``llm_string`` (the
  model's class and every parameter LangChain reports: model name,
  temperature, stop words, tools bound, ...), so two calls share an entry
  only if everything that can change the answer is equal, and neither the
  prompt nor the parameters ever appear in a Redis key;
* prompts or answers holding a secret (an API key, a private key, ...)
  are never stored;
* ``clear()`` invalidates the namespace in O(1) (``clear(model=...)`` one
  model); entries expire after the cache's TTL;
* a cache built with a tenant (``from_client(client, tenant=...)``, or
  :meth:`ToolkitLLMCache.for_tenant`) reads and writes that tenant's entries
  only, and ``clear()`` invalidates that tenant's alone; without one, every
  caller shares one namespace. LangChain's global cache (``set_llm_cache``)
  is one per process, so a multi-tenant application passes the tenant's
  cache to each model instead: ``ChatOpenAI(cache=cache.for_tenant(t))``.

LangChain caches every call its user sent through a cached model, so the
cache this module builds (:meth:`ToolkitLLMCache.from_client`) stores
sampling calls too. Pass your own :class:`~toolkit.cache.LLMCache` with
``cache_nondeterministic=False`` to skip calls whose ``llm_string`` shows a
temperature above zero and no seed (or shows no temperature).

Generations are stored as JSON (text generations, and chat generations with
their message as LangChain's ``message_to_dict``), never as pickles or
arbitrary LangChain objects, so an entry cannot instantiate anything but a
generation and a chat message. The async methods are LangChain's defaults:
they run the sync calls in a worker thread (each bounded by the cache
client's short timeouts).
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final
from uuid import UUID

from toolkit.cache import CacheClient, LLMCache
from toolkit.errors import InvalidInput

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.messages import message_to_dict, messages_from_dict
    from langchain_core.outputs import (
        ChatGeneration,
        ChatGenerationChunk,
        Generation,
        GenerationChunk,
    )
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "toolkit.integrations.langchain needs LangChain: "
        "pip install 'agent-persistence-toolkit[langchain]'"
    ) from exc

__all__ = ["ToolkitLLMCache"]

_log = logging.getLogger(__name__)

DEFAULT_MODEL: Final = "langchain"
"""The model name of entries whose ``llm_string`` names none."""
_MODEL_KEYS: Final = ("model", "model_name", "model_id", "deployment_name")
_FORMAT: Final = 1


class ToolkitLLMCache(BaseCache):
    """LangChain's ``BaseCache`` over the toolkit's :class:`~toolkit.cache.LLMCache`.

    ``llm_cache``
        The LLM cache to use (its client's namespace, TTL, breaker and
        counters are shared with every other user of it); its tenant, if
        it is bound to one (:meth:`LLMCache.for_tenant`), is this cache's.
    """

    def __init__(self, llm_cache: LLMCache) -> None:
        if not isinstance(llm_cache, LLMCache):
            raise InvalidInput("llm_cache must be a toolkit LLMCache", field="llm_cache")
        self.llm_cache = llm_cache

    @classmethod
    def from_client(
        cls, client: CacheClient, *, tenant: UUID | str | None = None, **options: Any
    ) -> ToolkitLLMCache:
        """A cache over a new ``LLMCache(client, tenant=tenant, **options)``; sampling calls
        are cached too. ``tenant`` None is the shared namespace."""
        options.setdefault("cache_nondeterministic", True)
        return cls(LLMCache(client, tenant=tenant, **options))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "langchain",
        tenant: UUID | str | None = None,
        **options: Any,
    ) -> ToolkitLLMCache:
        """A cache on the Redis at ``url`` under ``namespace`` (see :meth:`from_client`)."""
        client = CacheClient.from_url(url, namespace=namespace)
        return cls.from_client(client, tenant=tenant, **options)

    @property
    def tenant(self) -> UUID | None:
        """The tenant whose entries this cache serves; None for the shared namespace."""
        return self.llm_cache.tenant

    def for_tenant(self, tenant: UUID | str) -> ToolkitLLMCache:
        """This cache bound to ``tenant`` (cheap: see :meth:`LLMCache.for_tenant`)."""
        return type(self)(self.llm_cache.for_tenant(tenant))

    def request(self, prompt: str, llm_string: str) -> dict[str, Any]:
        """The request the entry of (``prompt``, ``llm_string``) is keyed on.

        Its ``model`` (and ``temperature`` / ``seed`` when the
        ``llm_string`` lists them) come from the parameters LangChain appends
        to the ``llm_string``; the prompt and the whole ``llm_string`` are
        part of the key either way.
        """
        params = _llm_params(llm_string)
        model = next(
            (str(params[key]) for key in _MODEL_KEYS if isinstance(params.get(key), str)),
            DEFAULT_MODEL,
        )
        request: dict[str, Any] = {"model": model, "prompt": prompt, "llm_string": llm_string}
        for key in ("temperature", "seed"):
            value = params.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                request[key] = value
        return request

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The cached generations of this call, or None (a miss, a bypass, or Redis down)."""
        found = self.llm_cache.get(self.request(prompt, llm_string))
        if found is None:
            return None
        try:
            return _decode(found.response)
        except (KeyError, TypeError, ValueError) as exc:
            _log.warning("ignoring an LLM cache entry that is not LangChain generations: %s", exc)
            return None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store this call's generations (dropped while Redis is down or if they hold a secret)."""
        try:
            response = _encode(return_val)
            self.llm_cache.set(self.request(prompt, llm_string), response)
        except InvalidInput as exc:
            # A cache never fails the call it serves: a value it cannot store is skipped.
            _log.warning("not caching LangChain generations: %s", exc)

    def clear(self, **kwargs: Any) -> None:
        """Invalidate every entry of this cache's tenant (or of the shared namespace), or of
        one model with ``clear(model=...)``."""
        model = kwargs.get("model")
        if model is not None:
            self.llm_cache.invalidate_model(str(model))
        else:
            self.llm_cache.invalidate_all()


def _llm_params(llm_string: str) -> dict[str, Any]:
    """The ``(name, value)`` pairs LangChain appends to an ``llm_string``, as a dict.

    Chat models write ``<serialized model>---[(name, value), ...]``, LLMs
    the list alone; anything else yields no parameters.
    """
    tail = llm_string.rsplit("---", 1)[-1].strip()
    if not (tail.startswith("[") and tail.endswith("]")) or len(tail) > 100_000:
        return {}
    try:
        pairs = ast.literal_eval(tail)  # literals only: never evaluates code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return {}
    if not isinstance(pairs, list):
        return {}
    return {
        pair[0]: pair[1]
        for pair in pairs
        if isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
    }


def _encode(generations: Sequence[Generation]) -> dict[str, Any]:
    items = []
    for generation in generations:
        if isinstance(generation, ChatGeneration):
            items.append(
                {
                    "kind": "chat",
                    "chunk": isinstance(generation, ChatGenerationChunk),
                    "message": message_to_dict(generation.message),
                    "info": generation.generation_info,
                }
            )
        elif isinstance(generation, Generation):
            items.append(
                {
                    "kind": "text",
                    "chunk": isinstance(generation, GenerationChunk),
                    "text": generation.text,
                    "info": generation.generation_info,
                }
            )
        else:
            raise InvalidInput(
                f"not a LangChain Generation: {type(generation).__name__}", field="return_val"
            )
    return {"format": _FORMAT, "generations": items}


def _decode(response: Any) -> list[Generation]:
    if not isinstance(response, Mapping) or response.get("format") != _FORMAT:
        raise ValueError("unknown entry format")
    generations: list[Generation] = []
    for item in response["generations"]:
        info = item.get("info")
        if item["kind"] == "chat":
            message = messages_from_dict([item["message"]])[0]
            chat_type = ChatGenerationChunk if item.get("chunk") else ChatGeneration
            generations.append(chat_type(message=message, generation_info=info))
        elif item["kind"] == "text":
            text_type = GenerationChunk if item.get("chunk") else Generation
            generations.append(text_type(text=item["text"], generation_info=info))
        else:
            raise ValueError(f"unknown generation kind {item['kind']!r}")
    return generations
