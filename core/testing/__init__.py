"""Test support for hiclaw and for third-party plugins.

Installing hiclaw registers a pytest plugin (``hiclaw.testing.pytest_plugin``) with fixtures that
start the *real* components on loopback — so a plugin's tests run against the real host:

``hiclaw_home``
    A fresh ``$HICLAW_HOME`` in a temporary directory, with ``HICLAW_*`` variables cleared.
``plugin_host``
    ``plugin_host(*plugins, defaults=False)`` builds a :class:`hiclaw.host.PluginHost` that loads
    only the given ``(name, plugin)`` pairs (and the default plugins if asked), never installed
    entry points — tests stay independent of what happens to be installed.

Fixtures for the homeserver, the gateway and scripted model, and an S3 server are added by
their components (see ``docs/plugins/testing.md``).
"""
from hiclaw.testing.waiting import wait_for, wait_for_async

__all__ = ["wait_for", "wait_for_async"]
