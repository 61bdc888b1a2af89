"""The async cache: :class:`AsyncCacheClient` and :class:`AsyncLLMCache`.

The same API as :mod:`toolkit.cache`, awaited, on ``redis.asyncio``. The
breaker, counters, records and checks are the sync cache's own classes, so
``isinstance`` and a shared :class:`CircuitBreaker` work across the two.
"""

from toolkit.aio.cache.client import AsyncCacheClient
from toolkit.aio.cache.llm import AsyncLLMCache
from toolkit.cache.breaker import BreakerState, CircuitBreaker
from toolkit.cache.entries import DEFAULT_LLM_TTL, CachedResponse, is_nondeterministic
from toolkit.cache.inputs import Outcome
from toolkit.cache.stats import BypassReason, CacheStats

__all__ = [
    "DEFAULT_LLM_TTL",
    "AsyncCacheClient",
    "AsyncLLMCache",
    "BreakerState",
    "BypassReason",
    "CacheStats",
    "CachedResponse",
    "CircuitBreaker",
    "Outcome",
    "is_nondeterministic",
]
