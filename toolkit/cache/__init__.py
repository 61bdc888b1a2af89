"""A fail-open Redis cache, and an LLM response cache built on it.

* :class:`CacheClient`: namespaced get/set/delete/get_json/set_json and batch
  get over redis-py, behind a :class:`CircuitBreaker`. Redis being down, slow
  or unreachable never raises: a read is a miss and a write is dropped.
* :class:`LLMCache`: responses keyed on a canonical SHA-256 fingerprint of
  the whole request, with stampede control, O(1) invalidation by model or
  namespace, no caching of sensitive data (:class:`SecretDetector`), and
  per-tenant entries (``LLMCache(client, tenant=...)``, ``for_tenant``)
  whose keys are Redis Cluster hash-tagged by tenant.

This package stands alone: it never imports :mod:`toolkit.db`.
"""

from toolkit.cache.breaker import BreakerState, CircuitBreaker
from toolkit.cache.client import HIREDIS_AVAILABLE, CacheClient, Outcome
from toolkit.cache.fingerprint import KeyExplanation, RequestFingerprinter
from toolkit.cache.llm import DEFAULT_LLM_TTL, CachedResponse, LLMCache, is_nondeterministic
from toolkit.cache.secrets import DEFAULT_SECRET_PATTERNS, SecretDetector, SecretPattern
from toolkit.cache.stats import BypassReason, CacheStats

__all__ = [
    "DEFAULT_LLM_TTL",
    "DEFAULT_SECRET_PATTERNS",
    "HIREDIS_AVAILABLE",
    "BreakerState",
    "BypassReason",
    "CacheClient",
    "CacheStats",
    "CachedResponse",
    "CircuitBreaker",
    "KeyExplanation",
    "LLMCache",
    "Outcome",
    "RequestFingerprinter",
    "SecretDetector",
    "SecretPattern",
    "is_nondeterministic",
]
