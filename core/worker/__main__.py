"""``python -m hiclaw.worker``: the worker process, without the CLI's start-up cost.

The control plane starts workers this way (``hiclaw worker run`` is the same for humans): no
click, no plugin commands to collect — a worker starts as fast as its imports allow.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from hiclaw.errors import HiclawError


def skip_ca_bundle(spec_json: str) -> None:
    """Load no CA bundle in a worker that speaks no TLS.

    aiohttp (the worker's HTTP stack) parses the system's whole CA bundle when it is imported:
    ~1.8 MB of every worker's memory. A worker whose URLs are all plain HTTP — its bridges on the
    sandbox's loopback, the usual case — never verifies a certificate, so OpenSSL is pointed at an
    empty bundle (its certificate folder still answers lookups). Any ``https://`` URL in the
    spec (a remote homeserver, an S3 endpoint), or an ``SSL_CERT_FILE`` already set, changes nothing.
    """
    if "https://" not in spec_json and "SSL_CERT_FILE" not in os.environ:
        os.environ["SSL_CERT_FILE"] = os.devnull


def skip_syntax_highlighting() -> None:
    """Keep Pygments out of the worker.

    Markdown's ``fenced_code`` extension (used to render chat messages) imports Pygments when it
    is installed, only to offer syntax highlighting — which chat messages do not use (clients
    highlight on their own). Marking it absent keeps several megabytes out of every worker.
    """
    sys.modules.setdefault("pygments", None)  # type: ignore[arg-type]


def main() -> int:
    skip_syntax_highlighting()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from hiclaw.worker.spec import ENV_VAR, WorkerRuntimeSpec

    skip_ca_bundle(os.environ.get(ENV_VAR, ""))
    from hiclaw.worker.runtime import WorkerRuntime

    try:
        spec = WorkerRuntimeSpec.from_env()
        asyncio.run(WorkerRuntime(spec).run_forever())
    except HiclawError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
