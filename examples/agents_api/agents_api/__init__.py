"""An example FastAPI service on the toolkit's async API (see README.md)."""

from agents_api.app import create_app

__all__ = ["create_app"]
