"""Integrations with agent frameworks, each behind an optional extra.

* :mod:`toolkit.integrations.langgraph` (``toolkit[langgraph]``): a LangGraph
  checkpointer, :class:`~toolkit.integrations.langgraph.ToolkitCheckpointSaver`,
  over the toolkit's PostgreSQL; it reads stored values with
  :class:`~toolkit.integrations.langgraph_serde.StrictSerializer`, an
  allow-list that refuses (never runs) any other type a stored value names.
* :mod:`toolkit.integrations.langchain` (``toolkit[langchain]``): a LangChain
  LLM cache, :class:`~toolkit.integrations.langchain.ToolkitLLMCache`, over
  :class:`toolkit.cache.LLMCache`.

Importing this package imports neither framework; each module raises an
ImportError naming its extra when the framework is missing.
:mod:`toolkit.integrations.checkpoint_store` holds the checkpointer's
queries and storage format, and needs no framework.
"""
