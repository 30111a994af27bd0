"""The probe program ``hiclaw sandbox check`` runs inside a sandbox (and, as a baseline, on the host).

``python -m hiclaw.sandbox.probes PLAN.json`` tries each thing a sandbox must prevent, plus a few
things it must allow, and prints one line ``HICLAW-PROBE-RESULT {json}``: for every probe
``{"reached": bool, "detail": str}``. It never prints file contents, only whether a read
succeeded and whether the planted canary was in it. Stdlib only.

The plan (written by :mod:`hiclaw.sandbox.check`) names the paths, ports and canaries; verdicts
are computed on the host, which also checks which attempted writes really landed on the host.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

RESULT_PREFIX = "HICLAW-PROBE-RESULT "
TIMEOUT = 2.0


def _read(path: str, canary: str | None) -> tuple[bool, str]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return False, f"{path}: {exc.strerror or type(exc).__name__}"
    if canary is not None and canary.encode() not in data:
        return False, f"{path}: readable but not the host's file (no canary)"
    return True, f"{path}: read"


def probe_reads(targets: list[dict[str, Any]]) -> dict[str, Any]:
    """Reached if any target file could be read (with its canary, when one was planted)."""
    details = []
    for target in targets:
        ok, detail = _read(target["path"], target.get("canary"))
        if ok:
            return {"reached": True, "detail": detail}
        details.append(detail)
    return {"reached": False, "detail": "; ".join(details) or "no targets"}


def probe_proc(canary: str) -> dict[str, Any]:
    """Reached if another process's environment or command line holds the host's canary."""
    needle = canary.encode()
    me = {str(os.getpid()), str(os.getppid())}
    seen = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry in me:
            continue
        seen += 1
        for leaf in ("environ", "cmdline"):
            try:
                data = Path(f"/proc/{entry}/{leaf}").read_bytes()
            except OSError:
                continue
            if needle in data:
                return {"reached": True, "detail": f"/proc/{entry}/{leaf} holds the host canary"}
    try:
        first = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError as exc:
        first = exc.strerror or "unreadable"
    return {"reached": False, "detail": f"{seen} other processes visible; pid 1 is {first[:80]!r}; no canary"}


def probe_writes(targets: list[str], tag: str) -> dict[str, Any]:
    """Try to create a file in each folder; the host decides which writes really landed."""
    written = []
    for folder in targets:
        path = Path(folder) / f".hiclaw-probe-{tag}"
        try:
            path.write_text("probe")
            written.append(str(path))
        except OSError:
            continue
    return {"reached": bool(written), "detail": "wrote " + ", ".join(written) if written else "every write refused",
            "written": written}


def probe_modify(paths: list[str]) -> dict[str, Any]:
    """Reached if an existing read-only file can be opened for writing (nothing is written)."""
    refused = []
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            refused.append(f"{path}: {exc.strerror}")
            continue
        os.close(fd)
        return {"reached": True, "detail": f"{path} is writable"}
    return {"reached": False, "detail": "; ".join(refused) or "no targets"}


def probe_tcp(port: int, canary: str) -> dict[str, Any]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
            data = conn.recv(256)
    except OSError as exc:
        return {"reached": False, "detail": f"127.0.0.1:{port}: {exc.strerror or type(exc).__name__}"}
    if canary.encode() in data:
        return {"reached": True, "detail": f"127.0.0.1:{port} answered with the host's canary"}
    return {"reached": False, "detail": f"127.0.0.1:{port} answered, but not the host's service"}


def probe_abstract(name: str, canary: str) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(TIMEOUT)
            conn.connect("\0" + name)
            data = conn.recv(256)
    except OSError as exc:
        return {"reached": False, "detail": f"abstract socket @{name}: {exc.strerror or type(exc).__name__}"}
    return {"reached": canary.encode() in data, "detail": f"abstract socket @{name} answered"}


def probe_interfaces() -> dict[str, Any]:
    names = [name for _, name in socket.if_nameindex()]
    others = [n for n in names if n != "lo"]
    return {"reached": bool(others), "detail": "interfaces: " + (", ".join(names) or "none")}


def _dns_query(server: str, name: str) -> bytes:
    query = struct.pack(">HHHHHH", 0x4869, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(query, (server, 53))
        return sock.recv(512)


def probe_dns(name: str, servers: list[str]) -> dict[str, Any]:
    """Reached if the name resolves, or if any of the host's DNS servers answers at all."""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
        return {"reached": True, "detail": f"{name} resolved to {', '.join(sorted(addresses))}"}
    except OSError as exc:
        resolved = f"{name}: {exc.strerror or exc}"
    for server in servers:
        try:
            answer = _dns_query(server, name)
        except OSError as exc:
            resolved += f"; DNS server {server}: {exc.strerror or type(exc).__name__}"
            continue
        if answer[:2] == b"\x48\x69":
            return {"reached": True, "detail": f"DNS server {server} answered (rcode {answer[3] & 15})"}
    return {"reached": False, "detail": resolved}


def control_write_home(home: str, tag: str) -> dict[str, Any]:
    path = Path(home) / f".hiclaw-probe-home-{tag}"
    try:
        path.write_text(tag)
        ok = path.read_text() == tag
        path.unlink()
    except OSError as exc:
        return {"reached": False, "detail": f"{home}: {exc.strerror}"}
    return {"reached": ok, "detail": f"wrote and read back a file in {home}"}


def control_import() -> dict[str, Any]:
    try:
        import hiclaw
    except ImportError as exc:
        return {"reached": False, "detail": f"import hiclaw failed: {exc}"}
    return {"reached": True, "detail": f"imported hiclaw from {Path(hiclaw.__file__).parent}"}


def run(plan: dict[str, Any]) -> dict[str, Any]:
    tag = plan["tag"]
    return {
        "control_secrets": probe_reads(plan["secrets"]),
        "control_state": probe_reads(plan["state"]),
        "other_worker_home": probe_reads(plan["other_home"]),
        "host_home": probe_reads(plan["host_home"]),
        "proc_environ": probe_proc(plan["process_canary"]),
        "write_outside_home": probe_writes(plan["write_targets"], tag),
        "private_tmp": probe_writes(["/tmp"], tag),
        "modify_system_files": probe_modify(plan["readonly_files"]),
        "unbridged_port": probe_tcp(plan["unbridged_port"], plan["port_canary"]),
        "abstract_socket": probe_abstract(plan["abstract_name"], plan["port_canary"]),
        "network_interfaces": probe_interfaces(),
        "dns": probe_dns(plan["dns_name"], plan["dns_servers"]),
        "home_writable": control_write_home(plan["home"], tag),
        "bridge": probe_tcp(plan["bridge_port"], plan["bridge_canary"]),
        "granted_mount_readable": probe_reads(plan["granted"]),
        "hiclaw_importable": control_import(),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hiclaw.sandbox.probes PLAN.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(args[0]).read_text())
    print(RESULT_PREFIX + json.dumps(run(plan)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
