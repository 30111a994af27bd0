"""What every service probe shares: the components it attacks, the options of a run, the verdict's shape.

:class:`ServiceComponents` makes each attacked component replaceable (a test swaps one for a
deliberately weakened one to show its probe says EXPOSED); :class:`ServiceOptions` selects the
probes of a run. A probe's verdict is a pair of :func:`outcome` dicts — what got through, and the
negative control — typed :data:`Verdict`.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The other worker of the check (the one a flood must not starve, the one whose mention must not wake).
OTHER = "other-worker"
NO_SANDBOX = "needs no sandbox: the boundary is the control plane's code, a worker only picks the input"
#: (what got through, the negative control): a probe's verdict.
Verdict = tuple[dict[str, Any], dict[str, Any]]


def local_storage(control_home: Path) -> Any:
    """The default local storage on ``control_home/data`` (as ``hiclaw up`` makes it)."""
    from hiclaw.host import ComponentContext
    from hiclaw.plugins.storage.local import make_local_storage
    from hiclaw.plugins.storage.local.settings import LocalStorageSettings

    return make_local_storage(LocalStorageSettings(), ComponentContext(home=control_home, side="control"))


def skill_service(config: Any) -> Any:
    """The control plane's skill service for ``[skills]`` (its ``policy`` guards workers' fetches)."""
    from hiclaw.registry.service import SkillService

    return SkillService(config)


def mention_gate(spec: Any, user_id: Callable[[str], str], handler: Any, **kwargs: Any) -> Any:
    from hiclaw.worker.runtime import worker_gate

    return worker_gate(spec, user_id, handler, **kwargs)


@dataclass
class ServiceComponents:
    """Factories of the components the probes attack; a test swaps one for a deliberately
    weakened one to show the probe can say EXPOSED."""

    storage: Callable[[Path], Any] = local_storage
    skills: Callable[[Any], Any] = skill_service
    gate: Callable[..., Any] = mention_gate


@dataclass
class ServiceOptions:
    components: ServiceComponents = field(default_factory=ServiceComponents)
    #: Run only these probes (``None``: all).
    only: frozenset[str] | None = None

    def wants(self, name: str) -> bool:
        return self.only is None or name in self.only


def fd_count() -> int | None:
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return None


def outcome(reached: bool, detail: str) -> dict[str, Any]:
    """One side of a verdict: did the attack get there, and what was seen."""
    return {"reached": bool(reached), "detail": detail}
