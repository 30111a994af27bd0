"""Gateway plugins (hold provider keys, issue consumer tokens): ``embedded`` (default), ``higress``."""
