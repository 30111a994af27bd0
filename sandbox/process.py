"""Process sandbox backend — NO isolation (plugin ``process``, sandbox ``process``).

Workers run as ordinary child processes with a cleared environment. They can read your files,
see your processes and use the network; every start logs a warning. Use it on macOS (no
bubblewrap) and while developing::

    [sandbox]
    plugin = "process"

``hiclaw sandbox check --backend process`` lists what is not isolated. The implementation is
:mod:`hiclaw.sandbox.backends.process`.
"""
from __future__ import annotations

from hiclaw import hookimpl
from hiclaw.protocols import RegisterSandbox
from hiclaw.sandbox.settings import ProcessSettings, lazy_backend

make_backend = lazy_backend("hiclaw.sandbox.backends.process", "ProcessBackend")


@hookimpl
def hiclaw_register_sandboxes(register: RegisterSandbox) -> None:
    register("process", make_backend, settings_model=ProcessSettings,
             description="plain child processes, NO isolation (macOS, development)")
