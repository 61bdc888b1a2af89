"""Every module that binds named queries: the toolkit's and the application's.

``toolkit verify``, ``toolkit queries`` and the pytest plugin need every
binding made before they walk them. The toolkit's own binding modules are
imported here, at the top of the house (``db/`` never imports upward); the
application's are the modules named in ``TOOLKIT_APP_MODULES``, imported
after the registry has loaded ``TOOLKIT_SQL_PATH``.
"""

from __future__ import annotations

import importlib

import toolkit.audit_anchors
import toolkit.integrations.checkpoint_store
import toolkit.messaging
import toolkit.repositories
import toolkit.storage.repository
from toolkit.config import Settings, default_settings
from toolkit.db.bind import BINDINGS, Binding
from toolkit.errors import ConfigurationError

TOOLKIT_BINDING_MODULES = (
    toolkit.repositories,
    toolkit.storage.repository,
    toolkit.messaging,
    toolkit.integrations.checkpoint_store,
    toolkit.audit_anchors,
)
"""The toolkit's modules whose import binds every query it runs."""


def load_bindings(settings: Settings | None = None) -> list[Binding]:
    """Every binding: the toolkit's, then those of the application's modules."""
    for name in (settings or default_settings()).app_module_names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"TOOLKIT_APP_MODULES: cannot import {name!r} ({exc}); "
                "is the application installed or on PYTHONPATH?"
            ) from exc
    return list(BINDINGS)
