"""`hiclaw demo`: the whole team on real components, driven by the scripted model."""
