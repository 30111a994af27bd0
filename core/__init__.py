"""hiclaw — run a team of AI agents from a chat room.

Plugin authors need only this module's :data:`hookimpl` marker::

    from hiclaw import hookimpl

    @hookimpl
    def hiclaw_register_channels(register):
        register("irc", make_irc_channel, settings_model=IrcSettings)

See ``docs/plugins/`` for every hook.
"""
import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "hiclaw"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
