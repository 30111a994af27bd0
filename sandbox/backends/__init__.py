"""Backend implementations (imported only when a backend is created; the entry modules stay light)."""
