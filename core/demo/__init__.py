"""`hiclaw demo`: the whole team on real components, driven by the scripted model."""

from pathlib import Path

#: The demo's private skill registry (served by ``hiclaw registry serve``'s app). Resolved, so it
#: is the real folder also from a strict editable install, whose link tree the registry's
#: link-refusing reader would reject file by file.
REGISTRY_ROOT = Path(__file__).resolve().parent / "registry"
