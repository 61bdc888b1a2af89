"""SQL-first persistence and infrastructure toolkit for AI-agent platforms."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "agent-persistence-toolkit"
"""The name on PyPI ("toolkit" there is an unrelated project); the import name stays toolkit."""

try:
    __version__: str = version(DISTRIBUTION)
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["DISTRIBUTION", "__version__"]
