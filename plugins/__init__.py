"""Default plugins shipped with hiclaw (channels, gateways, storage).

Each plugin module uses only the public hooks in :mod:`hiclaw.hookspecs`, exactly as a
third-party plugin would (DESIGN principle 7).
"""
