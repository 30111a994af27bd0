"""Worker start-up choices that keep each worker process small (figures: bench/worker_start.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from hiclaw.worker.__main__ import skip_ca_bundle

COUNT_CA_CERTS = "import ssl; print(ssl.create_default_context().cert_store_stats()['x509_ca'])"


def test_a_worker_that_speaks_no_tls_loads_no_ca_bundle(monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    skip_ca_bundle(json.dumps({"gateway": {"base_url": "http://127.0.0.1:4000/v1"}}))
    assert os.environ["SSL_CERT_FILE"] == os.devnull
    loaded = subprocess.run([sys.executable, "-c", COUNT_CA_CERTS], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "0"  # TLS contexts still work; they just parse no bundle


def test_any_https_url_or_a_chosen_bundle_keeps_the_default(monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    skip_ca_bundle(json.dumps({"channel": {"settings": {"homeserver_url": "https://matrix.example.org"}}}))
    assert "SSL_CERT_FILE" not in os.environ
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/my-ca.pem")
    skip_ca_bundle("{}")
    assert os.environ["SSL_CERT_FILE"] == "/etc/my-ca.pem"


def test_a_worker_loads_only_the_default_plugins_it_uses():
    from hiclaw.host import PluginHost
    from hiclaw.worker.runtime import worker_default_plugins
    from hiclaw.worker.spec import WorkerRuntimeSpec

    spec = WorkerRuntimeSpec.model_validate({
        "name": "alex", "channel": {"plugin": "matrix"}, "storage": {"plugin": "local-storage"},
        "gateway": {"base_url": "http://127.0.0.1:1/v1", "token": "t"}, "control_url": "http://127.0.0.1:2",
        "control_token": "c", "default_plugins": ["local-storage", "matrix", "worker-tools"]})
    chosen = worker_default_plugins(spec)
    assert [name for name, _ in chosen] == ["matrix", "local-storage", "worker-tools"]
    host = PluginHost(default_plugins=chosen, load_entry_points=False)
    assert {i.name for i in host.plugins()} == {"matrix", "local-storage", "worker-tools"}
    assert host.registrations("gateway") == {} and host.registrations("sandbox") == {}
    assert worker_default_plugins(spec.model_copy(update={"default_plugins": None})) is None
