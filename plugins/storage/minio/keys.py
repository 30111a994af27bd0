"""The per-worker keys this control plane issued, kept so that a changed grant reuses them.

A worker runs with the keys it was started with. Rotating them at every grant (each new task
changes a worker's grant) would cut off a worker in the middle of its work, so ``grant`` replaces
only the worker's *policy* — the change applies at once, to the running worker — and hands out
the same keys until ``revoke``. The keys live in ``$HICLAW_HOME/run/storage-keys.json`` (mode
0600; ``run/`` is never mounted into a sandbox), like ``secrets.toml`` beside it, so a restarted
control plane (which adopts running workers) keeps them too.
"""
from __future__ import annotations

import json
from pathlib import Path


class IssuedKeys:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def _load(self) -> dict[str, list[str]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, list[str]]) -> None:
        from hiclaw.storage.files import write_text_atomically

        if self.path is not None:
            write_text_atomically(self.path, json.dumps(data), mode=0o600, fsync=True)

    def get(self, worker: str) -> tuple[str, str] | None:
        keys = self._load().get(worker)
        if isinstance(keys, list) and len(keys) == 2 and all(isinstance(k, str) and k for k in keys):
            return keys[0], keys[1]
        return None

    def set(self, worker: str, keys: tuple[str, str]) -> None:
        data = self._load()
        data[worker] = list(keys)
        self._save(data)

    def forget(self, worker: str) -> None:
        data = self._load()
        if data.pop(worker, None) is not None:
            self._save(data)
