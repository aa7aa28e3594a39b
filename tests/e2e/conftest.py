"""Shared harness for the Outbox end-to-end tests.

Every test gets its own server: a config, state folder, generated TLS material and `dir`
transport folder inside the test's tmp_path. The server is started as a real process
(`target/debug/outbox serve --config ...`) and the harness waits for its one JSON "ready" line
on stdout; it never sleeps to synchronise. Deliveries are awaited by polling the mail folder
against a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTNAME = "mx.test"
PASSWORDS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}
READY_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 30.0
IO_TIMEOUT = 10.0
QID_RE = re.compile(r"queued as ([0-9A-HJKMNP-TV-Z]{26})\b")


# --------------------------------------------------------------------------- binary


def _binary() -> Path:
    env = os.environ.get("OUTBOX_BIN")
    if env:
        return Path(env).resolve()
    # Cheap when up to date; makes `pytest tests/e2e` work on its own.
    proc = subprocess.run(
        ["cargo", "build", "--quiet"], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.exit(f"cargo build failed:\n{proc.stderr[-4000:]}", returncode=3)
    return REPO / "target" / "debug" / "outbox"


@pytest.fixture(scope="session")
def outbox_bin() -> Path:
    path = _binary()
    if not path.exists():
        pytest.exit(f"server binary missing: {path}", returncode=3)
    return path


@pytest.fixture(scope="session")
def password_hashes(outbox_bin) -> dict[str, str]:
    """argon2id PHC strings made by `outbox passwd`, one per test account."""
    hashes = {}
    for login, password in PASSWORDS.items():
        proc = subprocess.run(
            [str(outbox_bin), "passwd"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"outbox passwd failed: {proc.stderr}"
        phc = proc.stdout.strip().splitlines()[-1].strip() if proc.stdout.strip() else ""
        assert phc.startswith("$argon2id$"), f"outbox passwd printed {proc.stdout!r}"
        hashes[login] = phc
    return hashes


# --------------------------------------------------------------------------- config


def default_config(hashes: dict[str, str]) -> dict:
    return {
        "hostname": HOSTNAME,
        "state_dir": "state",
        "smtp": {
            "submission_listen": ["127.0.0.1:0"],
            "submissions_listen": ["127.0.0.1:0"],
            "max_message_size": 41943040,
            "max_recipients": 50,
            "max_line_length": 1000,
            "max_command_length": 2048,
            "command_timeout_secs": 300,
            "data_timeout_secs": 600,
            "tls_handshake_timeout_secs": 10,
            "max_connections": 1000,
            "max_connections_per_ip": 100,
            "max_errors": 10,
            "max_auth_failures": 3,
            "auth_failures_per_ip": 10,
            "auth_failure_window_secs": 600,
            "auth_cooldown_secs": 900,
            "auth_min_duration_ms": 200,
        },
        "tls": {
            "cert": "tls/cert.pem",
            "key": "tls/key.pem",
            "ca": "tls/ca.pem",
            "generate_dev_cert": True,
        },
        "spool": {
            "fsync": True,
            "max_messages": 100000,
            "max_bytes": 10737418240,
            "min_free_disk_bytes": 0,
            "visibility_timeout_secs": 300,
            "max_attempts": 5,
            "retry_base_secs": 30,
            "retry_max_secs": 3600,
            "dead_letter_retention_days": 14,
        },
        "sender": {"workers": 4, "transport": {"kind": "dir", "path": "mail"}},
        "log": {"format": "text", "level": "info"},
        "metrics": {"listen": "127.0.0.1:0"},
        "http": {"listen": ["127.0.0.1:0"]},
        "account": [
            {
                "login": "alice",
                "password_hash": hashes["alice"],
                "identity": [
                    {"id": "alice", "email": "alice@example.com", "name": "Alice"},
                    {"id": "alice-domain", "domain": "alice.test"},
                ],
            },
            {
                "login": "bob",
                "password_hash": hashes["bob"],
                "identity": [{"id": "bob", "email": "bob@example.org"}],
            },
        ],
    }


def apply_overrides(config: dict, overrides: dict) -> dict:
    """Applies {"smtp.max_errors": 3, ...} (dotted keys) to a config dict, in place."""
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(table: dict, prefix: str = "") -> str:
    """A small TOML writer for the config's shapes (tables, arrays of tables, scalars)."""
    out = []
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_array(v)}
    for key, value in scalars.items():
        out.append(f"{key} = {_toml_value(value)}")
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if _is_table(value):
            out.append(f"\n[{name}]")
            out.append(to_toml(value, name))
        elif _is_table_array(value):
            for item in value:
                out.append(f"\n[[{name}]]")
                out.append(to_toml(item, name))
    return "\n".join(s for s in out if s != "")


def _is_table(v) -> bool:
    return isinstance(v, dict)


def _is_table_array(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)


# --------------------------------------------------------------------------- server


class Server:
    """One outbox process with its own folder."""

    def __init__(self, binary: Path, root: Path, config: dict):
        self.binary = binary
        self.root = root
        self.config = config
        self.config_path = root / "outbox.toml"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen | None = None
        self.submission: list[tuple[str, int]] = []
        self.submissions: list[tuple[str, int]] = []
        self.stdout_lines: list[str] = []
        self.starts = 0
        # Extra environment for the server process (e.g. AWS_ENDPOINT_URL), on top of ours.
        self.env: dict[str, str] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_toml(config) + "\n")
        tomllib.loads(self.config_path.read_text())  # our writer must produce valid TOML

    # --- paths
    @property
    def ca(self) -> str:
        return str(self.root / self.config["tls"]["ca"])

    @property
    def mail_dir(self) -> Path:
        return self.root / self.config["sender"]["transport"]["path"]

    @property
    def port(self) -> int:
        return self.submission[0][1]

    @property
    def tls_port(self) -> int:
        return self.submissions[0][1]

    # --- lifecycle
    def start(self) -> "Server":
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.config_path)],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, **self.env} if self.env else None,
        )
        log.close()
        ready = self._await_ready()
        self.submission = [_parse_addr(a) for a in ready.get("submission", [])]
        self.submissions = [_parse_addr(a) for a in ready.get("submissions", [])]
        self.metrics = _parse_addr(ready["metrics"]) if ready.get("metrics") else None
        self.https = [_parse_addr(a) for a in ready.get("https", [])]
        assert self.submission and self.submissions, f"ready line lacks listeners: {ready}"
        for _host, port in self.submission + self.submissions:
            assert port != 0, f"ready line did not resolve port 0: {ready}"
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        return self

    def _await_ready(self) -> dict:
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace").strip()
                self.stdout_lines.append(text)
                try:
                    msg = json.loads(text)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("event") == "ready":
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(
                    f"server printed no ready line within {READY_TIMEOUT}s\n{self.log_tail()}"
                )
            readable, _, _ = select.select([fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.wait(timeout=5)
                    raise AssertionError(
                        f"server exited ({code}) before it was ready; stdout={self.stdout_lines}\n"
                        f"{self.log_tail()}"
                    )
                buf += chunk

    def _drain(self, proc):
        try:
            for line in proc.stdout:
                self.stdout_lines.append(line.decode("utf-8", "replace").rstrip())
        except (ValueError, OSError):
            pass

    def kill(self):
        """SIGKILL, as a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and self.proc.stdout:
            try:
                self.proc.stdout.close()
            except OSError:
                pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "----- server stderr (tail) -----\n" + "\n".join(text.splitlines()[-lines:])

    # --- deliveries
    def delivered_ids(self) -> set[str]:
        if not self.mail_dir.is_dir():
            return set()
        return {p.stem for p in self.mail_dir.glob("*.eml")}

    def wait_delivered(self, queue_ids, timeout: float = DELIVERY_TIMEOUT) -> None:
        want = set(queue_ids)
        deadline = time.monotonic() + timeout
        while True:
            missing = want - self.delivered_ids()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not delivered within {timeout}s: {sorted(missing)}\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def delivery(self, queue_id: str, timeout: float = DELIVERY_TIMEOUT) -> tuple[dict, bytes]:
        """Waits for one message; returns (envelope json, eml bytes)."""
        self.wait_delivered([queue_id], timeout)
        envelope = json.loads((self.mail_dir / f"{queue_id}.json").read_text())
        eml = (self.mail_dir / f"{queue_id}.eml").read_bytes()
        return envelope, eml

    def wait_for_eml_containing(self, needle: bytes, timeout: float = DELIVERY_TIMEOUT):
        """Polls the mail folder for a message whose bytes contain needle; returns (id, json, eml)."""
        deadline = time.monotonic() + timeout
        while True:
            for qid in sorted(self.delivered_ids()):
                eml = (self.mail_dir / f"{qid}.eml").read_bytes()
                if needle in eml:
                    envelope = json.loads((self.mail_dir / f"{qid}.json").read_text())
                    return qid, envelope, eml
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no delivered message contains {needle!r} within {timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    # --- clients
    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def connect(self, implicit_tls: bool = False, timeout: float = IO_TIMEOUT) -> "Conn":
        port = self.tls_port if implicit_tls else self.port
        conn = Conn(socket.create_connection(("127.0.0.1", port), timeout=timeout), self)
        if implicit_tls:
            conn.start_tls()
        return conn


def _parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Conn:
    """A raw SMTP client connection: exact bytes out, whole replies in."""

    def __init__(self, sock: socket.socket, server: Server):
        self.sock = sock
        self.server = server
        self.buf = b""
        self.tls = False

    def send(self, data: bytes | str):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def cmd(self, line: str) -> list[str]:
        self.send(line + "\r\n")
        return self.reply()

    def read_line(self, timeout: float = IO_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete reply line within {timeout}s; have {self.buf!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError(
                    f"no complete reply line within {timeout}s; have {self.buf!r}"
                ) from None
            if not chunk:
                raise ConnectionError(f"connection closed; unparsed {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout: float = IO_TIMEOUT) -> list[str]:
        """Reads one complete (possibly multi-line) reply; returns its lines."""
        lines = []
        while True:
            raw = self.read_line(timeout)
            text = raw.decode("utf-8", "replace")
            if not re.match(r"^[2-5]\d\d([ -]|$)", text):
                raise AssertionError(f"malformed reply line {text!r} (after {lines})")
            if lines and text[:3] != lines[0][:3]:
                raise AssertionError(f"reply code changed inside multi-line reply: {lines + [text]}")
            lines.append(text)
            if len(text) == 3 or text[3] == " ":
                return lines

    def start_tls(self, server_hostname: str = "localhost"):
        assert not self.buf, f"server sent bytes before the TLS handshake: {self.buf!r}"
        ctx = self.server.tls_context()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.tls = True

    def wait_closed(self, timeout: float = IO_TIMEOUT) -> bytes:
        """Reads until EOF; returns whatever came before it. Raises if still open at timeout."""
        data, self.buf = self.buf, b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {data!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return data
            except ssl.SSLError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def start_server(outbox_bin, password_hashes, tmp_path, request):
    """start_server(overrides={"smtp.max_errors": 3}, setup=callable(root), env={...}) -> running
    Server; env adds variables to the server process's environment."""
    servers: list[Server] = []
    request.node._outbox_servers = servers

    def start(
        overrides: dict | None = None, setup=None, name: str = "srv", env: dict | None = None
    ) -> Server:
        config = apply_overrides(default_config(password_hashes), overrides or {})
        server = Server(outbox_bin, tmp_path / f"{name}{len(servers)}", config)
        server.env = dict(env or {})
        if setup:
            setup(server.root)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server) -> Server:
    return start_server()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for server in getattr(item, "_outbox_servers", []):
            report.sections.append((f"outbox log {server.root.name}", server.log_tail(80)))


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))


# --------------------------------------------------------------------------- helpers


def b64(text: str | bytes) -> str:
    if isinstance(text, str):
        text = text.encode("utf-8")
    return base64.b64encode(text).decode("ascii")


def plain_token(login: str, password: str) -> str:
    return b64(f"\0{login}\0{password}")


def queue_id_of(reply: str | bytes) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    m = QID_RE.search(reply)
    assert m, f"no 16-hex queue id in reply {reply!r}"
    return m.group(1)


def make_message(
    subject: str,
    sender: str = "alice@example.com",
    to: str = "rcpt@example.net",
    extra_headers: str = "",
    body: str = "Hello.\r\n",
) -> bytes:
    marker = f"<{time.monotonic_ns()}.{os.getpid()}@e2e.test>"
    text = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {marker}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n{extra_headers}\r\n{body}"
    )
    return text.encode("utf-8")


# --------------------------------------------------------------------------- logs


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def log_lines(server: Server, pattern: str) -> list[str]:
    """The server's stderr lines (colour codes removed) that match the regex `pattern`."""
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return []
    rx = re.compile(pattern)
    return [line for line in _ANSI_RE.sub("", text).splitlines() if rx.search(line)]


def wait_for_log(
    server: Server, pattern: str, count: int = 1, timeout: float = DELIVERY_TIMEOUT
) -> list[str]:
    """Polls the server's stderr file until `count` lines match `pattern`; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log_lines(server, pattern)
        if len(lines) >= count:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(lines)} of {count} log lines matching {pattern!r} within {timeout}s\n"
                f"{server.log_tail()}"
            )
        if not server.alive():
            raise AssertionError(f"server exited while waiting for {pattern!r}\n{server.log_tail()}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- moto_server (SES)


MOTO_READY_TIMEOUT = 60.0
SEND_EMAIL_PATH = "/v2/email/outbound-emails"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """One moto_server process (AWS stand-in) and its /moto-api helpers."""

    def __init__(self, root: Path):
        import sys

        # moto_server, with DynamoDB calls serialized (see moto_server.py: moto's transactions
        # are not isolated from concurrent requests; DynamoDB's are).
        try:
            import moto.server  # noqa: F401
        except ImportError:
            pytest.fail("moto not installed: pip install -r tests/e2e/requirements.txt")
        command = [sys.executable, str(Path(__file__).with_name("moto_server.py"))]
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "moto.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab")
        env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(root / "recording.jsonl")}
        self.proc = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + MOTO_READY_TIMEOUT
        while True:
            try:
                self.call("POST", "/moto-api/reset", timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"moto_server did not come up\n{self.log_tail()}")
                time.sleep(0.1)
        self._sesv2 = None

    def call(self, method: str, path: str, body: bytes | None = None, timeout: float = 10) -> bytes:
        import urllib.request

        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no moto log)"
        return "----- moto_server log (tail) -----\n" + "\n".join(text.splitlines()[-lines:])

    # --- state
    def reset(self):
        """Empties every moto backend and the request recording; recording off."""
        self.call("POST", "/moto-api/reset")
        self.call("POST", "/moto-api/recorder/stop-recording")
        self.call("POST", "/moto-api/recorder/reset-recording")

    @property
    def sesv2(self):
        if self._sesv2 is None:
            import boto3

            self._sesv2 = boto3.client(
                "sesv2",
                endpoint_url=self.url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return self._sesv2

    def raw_messages(self) -> list[dict]:
        """What SES "sent": ses.RawMessage[] with raw_data, destinations, source, id."""
        data = json.loads(self.call("GET", "/moto-api/data.json"))
        return data.get("ses", {}).get("RawMessage", [])

    def wait_raw_message(self, needle: str, timeout: float = DELIVERY_TIMEOUT, server=None) -> dict:
        """Polls until a sent raw message contains `needle`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.raw_messages() if needle in m.get("raw_data", "")]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                extra = server.log_tail() if server is not None else ""
                raise AssertionError(f"no SES message containing {needle!r} within {timeout}s\n{extra}")
            time.sleep(0.1)

    # --- recorder
    def start_recording(self):
        self.call("POST", "/moto-api/recorder/start-recording")

    def recording(self) -> list[dict]:
        """The recorded requests, one dict each, with `body` decoded to bytes."""
        out = []
        text = self.call("GET", "/moto-api/recorder/download-recording").decode("utf-8")
        for line in text.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            body = entry.get("body") or ""
            entry["body"] = (
                base64.b64decode(body) if entry.get("body_encoded") else body.encode("utf-8")
            )
            out.append(entry)
        return out

    def send_email_requests(self) -> list[dict]:
        """The JSON bodies of the SES v2 SendEmail requests recorded."""
        from urllib.parse import urlsplit

        return [
            json.loads(e["body"])
            for e in self.recording()
            if e.get("method") == "POST" and urlsplit(e.get("url", "")).path == SEND_EMAIL_PATH
        ]


@pytest.fixture(scope="session")
def moto_session(tmp_path_factory):
    moto = Moto(tmp_path_factory.mktemp("moto"))
    yield moto
    moto.stop()


@pytest.fixture
def moto(moto_session) -> Moto:
    """The session's moto_server, emptied for this test."""
    if moto_session.proc.poll() is not None:
        pytest.fail(f"moto_server exited\n{moto_session.log_tail()}")
    moto_session.reset()
    return moto_session


def ses_env(endpoint: str) -> dict[str, str]:
    """Environment that points the server's AWS SDK at `endpoint` with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        # Nothing from the developer's own AWS files or an instance role may leak in.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


SES_ALICE = {
    "tenant_id": "acme-co",
    "account_id": "acct.42",
    "user_id": "alice@example.com",
    "identity_id": "alice-main",
    "email": "alice@example.com",
    "configuration_set": "outbox-transactional",
    "text_signature": "-- \nAlice Example\nExample Corp",
    "html_signature": "<p>-- <br>Alice Example, <b>Example Corp</b></p>",
}


def ses_accounts(hashes: dict[str, str]) -> list[dict]:
    a = SES_ALICE
    return [
        {
            "login": "alice",
            "password_hash": hashes["alice"],
            "tenant_id": a["tenant_id"],
            "account_id": a["account_id"],
            "user_id": a["user_id"],
            "identity": [
                {
                    "id": a["identity_id"],
                    "email": a["email"],
                    "name": "Alice",
                    "configuration_set": a["configuration_set"],
                    "text_signature": a["text_signature"],
                    "html_signature": a["html_signature"],
                },
            ],
        },
    ]


@pytest.fixture
def start_ses_server(start_server, password_hashes):
    """start_ses_server(endpoint, overrides=None) -> Server using the `ses` transport against
    `endpoint` (moto or a proxy in front of it), with 1-2 s retry backoff."""

    def start(endpoint: str, overrides: dict | None = None) -> Server:
        config = {
            "sender.transport": {"kind": "ses", "max_send_rate": 50, "timeout_secs": 10},
            "spool.retry_base_secs": 1,
            "spool.retry_max_secs": 2,
            "account": ses_accounts(password_hashes),
        }
        config.update(overrides or {})
        return start_server(config, env=ses_env(endpoint), name="ses")

    return start


def submit_as_alice(server, message: bytes, rcpts: list[str], sender: str = "alice@example.com") -> str:
    """STARTTLS + AUTH as alice, one transaction; returns the queue id from the DATA reply."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        client.mail(sender)
        for rcpt in rcpts:
            client.rcpt(rcpt)
        code, reply = client.data(message)
        assert code == 250, reply
        return queue_id_of(reply)


# --------------------------------------------------------------------------- admin CLI


def cli(server, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `outbox ARGS --config ...` against the running server (admin socket)."""
    proc = subprocess.run(
        [str(server.binary), *args, "--config", str(server.config_path)],
        capture_output=True, text=True, timeout=30,
    )
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc


def records(server, *args: str) -> list[dict]:
    """`outbox queue ... --json` records."""
    return json.loads(cli(server, *args, "--json").stdout)["records"]


def wait_record(server, queue_id: str, predicate, timeout: float = DELIVERY_TIMEOUT) -> dict:
    """Polls `outbox queue show ID` until `predicate(record)` holds; returns the record."""
    deadline = time.monotonic() + timeout
    while True:
        rec = records(server, "queue", "show", queue_id)[0]
        if predicate(rec):
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"record {queue_id} never matched: {rec}\n{server.log_tail()}")
        time.sleep(0.05)
