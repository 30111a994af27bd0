"""Test support for hiclaw and for third-party plugins.

Installing hiclaw registers a pytest plugin (``hiclaw.testing.pytest_plugin``) with fixtures that
start the *real* components on loopback — so a plugin's tests run against the real host:

``hiclaw_home``
    A fresh ``$HICLAW_HOME`` in a temporary directory, with ``HICLAW_*`` variables cleared.
``plugin_host``
    ``plugin_host(*plugins, defaults=False)`` builds a :class:`hiclaw.host.PluginHost` that loads
    only the given ``(name, plugin)`` pairs (and the default plugins if asked), never installed
    entry points — tests stay independent of what happens to be installed.

``clean_env(home)``
    The environment for a subprocess (``hiclaw up``, a CLI command): no ``HICLAW_*`` settings but
    the session's choice of installed plugins.

Installed (entry-point) plugins do not load in a test session unless asked for: list them in
the ``hiclaw_entry_point_plugins`` ini option (``*`` for all) or in ``HICLAW_ENTRY_POINT_PLUGINS``.

Fixtures for the homeserver, the gateway and scripted model, and an S3 server are added by
their components (see ``docs/plugins/testing.md``).
"""
from hiclaw.testing.env import clean_env
from hiclaw.waiting import wait_for, wait_until

#: Deprecated name of :func:`wait_until` (kept for plugins' test suites written against it).
wait_for_async = wait_until

__all__ = ["clean_env", "wait_for", "wait_for_async", "wait_until"]
