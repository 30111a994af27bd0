"""Storage plugins (shared files): ``local`` (default), ``minio`` (any S3-compatible server)."""
