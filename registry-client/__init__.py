"""Skills: a skills.sh-compatible registry client, a safe installer, lock files and a private registry.

Modules (import what you need; this package imports nothing heavy):

- :mod:`hiclaw.registry.client` — :class:`RegistryClient` (search, fetch any source, verified).
- :mod:`hiclaw.registry.installer` — atomic install, list, remove, check into a scope.
- :mod:`hiclaw.registry.scopes` — project / global (``-g``) / explicit ``--dir`` scopes.
- :mod:`hiclaw.registry.update` — re-fetch locked skills and reinstall changed ones.
- :mod:`hiclaw.registry.server` — the private registry (``hiclaw registry serve``).
- :mod:`hiclaw.registry.service` — :class:`SkillService`, the control plane's side of the
  workers' ``skills_find`` / ``skills_add`` / ``skills_read`` tools, with the ``[skills]`` policy.
- :mod:`hiclaw.registry.plugin` — registers the ``skills-sh`` skill registry.

See ``docs/skills.md``.
"""
