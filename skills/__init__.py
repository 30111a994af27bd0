"""Bundled SKILL.md skills (data). Read them with :func:`importlib.resources.files` on ``hiclaw.skills``."""
