"""Raw SMTP dialogs kept as data files (tests/e2e/dialogs/*.txt), plus protocol tests that need
more than one connection or real time (caps, timeouts, spool full, AUTH timing).

Dialog file format, one directive per line (blank lines and lines starting with '#' ignored):

    CONFIG smtp.max_errors = 3   set a config key (dotted path; value is a TOML value)
    SETUP file NAME              create an empty regular file NAME in the server folder first
    SUPPRESS ADDR [ARGS]         `outbox suppression add ADDR ARGS` once the server runs
    CONNECT submission           open a (new) connection; `submissions` = implicit TLS.
                                 A dialog that starts without CONNECT opens `submission`.
    C: text                      send text + CRLF
    R: text                      send text as is (no CRLF appended): for smuggling and pipelining
    BDAT: text                   send `BDAT <len>` CRLF and the chunk
    BDAT LAST: text              send `BDAT <len> LAST` CRLF and the chunk
    S: pattern                   read one whole reply; its LAST line must match the pattern
    S? pattern                   like S:, but optional: consumed only if the next reply matches
    S+ pattern                   the reply just read has a line whose text (code stripped)
                                 matches the pattern
    S- pattern                   ... has no such line
    TLS                          TLS handshake on the socket (verifying the generated CA)
    CLOSED                       the server closes the connection (it may send 4xx/5xx replies
                                 first, nothing else)
    DELIVERED n                  exactly n messages (those queued by this dialog) are delivered:
                                 waits for the queue ids seen in replies, then sends a control
                                 message on a fresh connection and waits for it, then counts
    EML+ text / EML- text        the single message delivered by this dialog contains / lacks text

Set E2E_TRANSCRIPT=1 (with pytest -s) to print every dialog's transcript.

Patterns are globs (`*` any text, `?` one character) matched against the whole line;
`{QID}` is a 26-character queue id (Crockford base32), `a|b` are alternatives.

In C:/R:/BDAT text: escapes `\\r`, `\\n`, `\\t`, `\\0`, `\\xHH`, `\\\\`; and placeholders
`{PLAIN_ALICE}` `{PLAIN_ALICE_BAD}` `{PLAIN_UNKNOWN}` `{PLAIN_BOB}` (AUTH PLAIN tokens),
`{B64_ALICE}` `{B64_ALICE_PW}` `{B64_BAD_PW}` (AUTH LOGIN pieces), `{MAX_SIZE}` (the
configured max_message_size), `{MAX_SIZE+1}`, `{X*n}` (n times the character X, any X).
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
import statistics
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import (
    PASSWORDS,
    QID_RE,
    Conn,
    b64,
    cli,
    make_message,
    plain_token,
    queue_id_of,
)

DIALOGS = Path(__file__).parent / "dialogs"
DIALOG_FILES = sorted(DIALOGS.glob("*.txt"))


# --------------------------------------------------------------------------- parsing


@dataclass
class Dialog:
    path: Path
    overrides: dict = field(default_factory=dict)
    setup_files: list = field(default_factory=list)
    suppress: list = field(default_factory=list)  # argument lists for `suppression add`
    steps: list = field(default_factory=list)  # (lineno, op, arg)


def parse_dialog(path: Path) -> Dialog:
    d = Dialog(path)
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("CONFIG "):
            key, _, value = line[len("CONFIG "):].partition("=")
            d.overrides[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
            continue
        if line.startswith("SETUP file "):
            d.setup_files.append(line[len("SETUP file "):].strip())
            continue
        if line.startswith("SUPPRESS "):
            d.suppress.append(line[len("SUPPRESS "):].split())
            continue
        m = re.match(r"^(C:|R:|BDAT LAST:|BDAT:|S:|S\?|S\+|S-|EML\+|EML-)\s?(.*)$", line)
        if m:
            d.steps.append((n, m.group(1).rstrip(":"), m.group(2)))
            continue
        m = re.match(r"^(CONNECT|DELIVERED)\s+(\S+)\s*$", line)
        if m:
            d.steps.append((n, m.group(1), m.group(2)))
            continue
        if line.strip() in ("TLS", "CLOSED"):
            d.steps.append((n, line.strip(), ""))
            continue
        raise ValueError(f"{path.name}:{n}: cannot parse {line!r}")
    return d


def pattern_regex(pattern: str) -> re.Pattern:
    alts = []
    for alt in pattern.split("|"):
        out = ""
        i = 0
        while i < len(alt):
            if alt.startswith("{QID}", i):
                out += "[0-9A-HJKMNP-TV-Z]{26}"
                i += 5
            elif alt[i] == "*":
                out += ".*"
                i += 1
            elif alt[i] == "?":
                out += "."
                i += 1
            else:
                out += re.escape(alt[i])
                i += 1
        alts.append(out)
    return re.compile("^(?:" + "|".join(alts) + ")$", re.S)


_ESCAPE = re.compile(rb"\\(r|n|t|0|x[0-9A-Fa-f]{2}|\\)")


def unescape(text: str) -> bytes:
    def repl(m):
        e = m.group(1)
        return {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}.get(
            e, bytes([int(e[1:], 16)]) if e.startswith(b"x") else e
        )

    return _ESCAPE.sub(repl, text.encode("utf-8"))


def substitute(text: str, server) -> str:
    max_size = server.config["smtp"]["max_message_size"]
    values = {
        "PLAIN_ALICE": plain_token("alice", PASSWORDS["alice"]),
        "PLAIN_ALICE_BAD": plain_token("alice", "wrong-password"),
        "PLAIN_UNKNOWN": plain_token("nobody", "wrong-password"),
        "PLAIN_BOB": plain_token("bob", PASSWORDS["bob"]),
        "B64_ALICE": b64("alice"),
        "B64_ALICE_PW": b64(PASSWORDS["alice"]),
        "B64_BAD_PW": b64("wrong-password"),
        "MAX_SIZE": str(max_size),
        "MAX_SIZE+1": str(max_size + 1),
    }

    def repl(m):
        name = m.group(1)
        if name in values:
            return values[name]
        rep = re.fullmatch(r"(.)\*(\d+)", name, re.S)
        if rep:
            return rep.group(1) * int(rep.group(2))
        raise KeyError(f"unknown placeholder {{{name}}}")

    return re.sub(r"\{([^{}]+)\}", repl, text)


# --------------------------------------------------------------------------- running


class DialogRunner:
    def __init__(self, dialog: Dialog, server):
        self.d = dialog
        self.server = server
        self.conn: Conn | None = None
        self.last: list[str] | None = None
        self.pending: list[str] | None = None  # a reply read by S? that did not match
        self.queued: list[str] = []
        self.transcript: list[str] = []

    def fail(self, n, msg):
        text = "\n".join(self.transcript[-40:])
        raise AssertionError(f"{self.d.path.name}:{n}: {msg}\n--- transcript ---\n{text}")

    def connect(self, kind: str):
        if self.conn:
            self.conn.close()
        if kind not in ("submission", "submissions"):
            raise ValueError(f"CONNECT {kind}?")
        self.conn = self.server.connect(implicit_tls=(kind == "submissions"))
        self.pending = None
        self.transcript.append(f"*** connected to {kind}")

    def next_reply(self, n) -> list[str]:
        if self.pending is not None:
            reply, self.pending = self.pending, None
            return reply
        try:
            reply = self.conn.reply()
        except (TimeoutError, ConnectionError, OSError) as e:
            self.fail(n, f"expected a reply, got {type(e).__name__}: {e}")
        for line in reply:
            self.transcript.append(f"S: {line}")
        for line in reply:
            m = QID_RE.search(line)
            if m and line.startswith("250"):
                self.queued.append(m.group(1))
        return reply

    def send(self, n, data: bytes):
        shown = data.decode("utf-8", "replace")
        if len(shown) > 300:
            shown = shown[:150] + f"...({len(data)} bytes)..." + shown[-80:]
        self.transcript.append(f"C: {shown!r}")
        try:
            self.conn.send(data)
        except OSError as e:
            self.fail(n, f"send failed: {e}")

    def run(self):
        steps = self.d.steps
        if not steps or steps[0][1] != "CONNECT":
            self.connect("submission")
        for n, op, arg in steps:
            if op == "CONNECT":
                self.connect(arg)
            elif op == "C":
                self.send(n, unescape(substitute(arg, self.server)) + b"\r\n")
            elif op == "R":
                self.send(n, unescape(substitute(arg, self.server)))
            elif op in ("BDAT", "BDAT LAST"):
                chunk = unescape(substitute(arg, self.server))
                last = " LAST" if op == "BDAT LAST" else ""
                self.send(n, f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
            elif op in ("S", "S?"):
                reply = self.next_reply(n)
                ok = pattern_regex(arg).match(reply[-1])
                if op == "S?":
                    if ok:
                        self.last = reply
                    else:
                        self.pending = reply
                    continue
                if not ok:
                    self.fail(n, f"reply {reply!r} does not match {arg!r}")
                self.last = reply
            elif op in ("S+", "S-"):
                assert self.last is not None
                rx = pattern_regex(arg)
                found = any(rx.match(line[4:]) for line in self.last)
                if found != (op == "S+"):
                    self.fail(n, f"reply {self.last!r}: {'no' if op == 'S+' else 'a'} line matches {arg!r}")
            elif op == "TLS":
                if self.pending is not None:
                    self.fail(n, f"unexpected reply before TLS: {self.pending!r}")
                try:
                    self.conn.start_tls()
                except (AssertionError, ssl.SSLError, OSError) as e:
                    self.fail(n, f"TLS handshake failed: {e}")
                self.transcript.append("*** TLS established")
            elif op == "CLOSED":
                self.expect_closed(n)
            elif op == "DELIVERED":
                self.check_delivered(n, int(arg))
            elif op in ("EML+", "EML-"):
                assert len(self.queued) == 1, f"EML checks need exactly one queued message: {self.queued}"
                _, eml = self.server.delivery(self.queued[0])
                needle = unescape(substitute(arg, self.server))
                if (needle in eml) != (op == "EML+"):
                    self.fail(n, f"delivered message {'lacks' if op == 'EML+' else 'has'} {needle!r}:\n{eml[:2000]!r}")
            else:
                raise AssertionError(op)
        if self.conn:
            self.conn.close()
        if os.environ.get("E2E_TRANSCRIPT"):  # E2E_TRANSCRIPT=1 pytest -s: show every dialog
            print(f"\n--- {self.d.path.name} ---\n" + "\n".join(self.transcript))

    def expect_closed(self, n):
        if self.pending is not None:
            extra = self.pending
            self.pending = None
            if not extra[-1][:1] in ("4", "5"):
                self.fail(n, f"expected close, got {extra!r}")
        try:
            data = self.conn.wait_closed()
        except AssertionError as e:
            self.fail(n, str(e))
        for line in data.decode("utf-8", "replace").splitlines():
            self.transcript.append(f"S: {line}")
            if not re.match(r"^[45]\d\d[ -]", line):
                self.fail(n, f"before closing, the server sent {line!r}")
        self.transcript.append("*** closed by server")

    def check_delivered(self, n, count: int):
        self.server.wait_delivered(self.queued)
        # Control message, sent after everything in the dialog: once it is delivered, anything
        # the dialog queued (and only that) should be there too.
        s = smtplib.SMTP_SSL(
            "127.0.0.1", self.server.tls_port, context=self.server.tls_context(), timeout=15
        )
        s.login("bob", PASSWORDS["bob"])
        s.mail("bob@example.org")
        s.rcpt("control@example.net")
        code, resp = s.data(make_message("control", sender="bob@example.org", to="control@example.net"))
        assert code == 250, (code, resp)
        s.quit()
        control = queue_id_of(resp)
        self.server.wait_delivered([control])
        others = self.server.delivered_ids() - {control}
        if len(others) != count or not set(self.queued) <= others:
            self.fail(n, f"expected {count} delivered message(s) (queued by dialog: {self.queued}), "
                         f"found {sorted(others)}")


@pytest.mark.parametrize("path", DIALOG_FILES, ids=[p.stem for p in DIALOG_FILES])
def test_dialog(start_server, path):
    dialog = parse_dialog(path)

    def setup(root: Path):
        for name in dialog.setup_files:
            (root / name).write_bytes(b"")

    server = start_server(dialog.overrides, setup=setup)
    for args in dialog.suppress:
        cli(server, "suppression", "add", *args)
    DialogRunner(dialog, server).run()


def test_dialog_files_present():
    assert len(DIALOG_FILES) >= 30, DIALOG_FILES
    for path in DIALOG_FILES:
        parse_dialog(path)


# --------------------------------------------------------------------------- multi-connection


def _ehlo_auth(conn: Conn, login="alice"):
    assert conn.reply()[-1].startswith("220 ")
    assert conn.cmd("EHLO client.test")[-1].startswith("250")
    r = conn.cmd(f"AUTH PLAIN {plain_token(login, PASSWORDS[login])}")
    assert r[-1].startswith("235 2.7.0"), r


def test_connection_cap_per_ip(start_server):
    server = start_server({"smtp.max_connections_per_ip": 2})
    a, b = server.connect(), server.connect()
    assert a.reply()[-1].startswith("220 ")
    assert b.reply()[-1].startswith("220 ")
    c = server.connect()
    r = c.reply()
    assert r[-1].startswith("421 4.7.0"), r
    c.wait_closed()
    # The first two are still served.
    assert a.cmd("NOOP")[-1].startswith("250")
    a.close()
    # Once a slot is free, a new connection is served again (bookkeeping may lag the close a bit).
    deadline = time.monotonic() + 10
    while True:
        d = server.connect()
        r = d.reply()
        d.close()
        if r[-1].startswith("220 "):
            break
        assert time.monotonic() < deadline, f"slot never freed: {r}"
        time.sleep(0.1)
    assert b.cmd("NOOP")[-1].startswith("250")


def test_parallel_first_logins_from_one_address_all_succeed(start_server):
    # A program opening one session per account at once, from one address: checks in flight
    # fill the per-IP failure budget (here 1), but none failed, so the others wait their turn
    # instead of being told "Too many authentication failures" (found by scripts/bench-peer's
    # 50-accounts workload).
    import threading

    server = start_server({"smtp.auth_failures_per_ip": 1})
    logins = ["alice", "bob"] * 3
    barrier = threading.Barrier(len(logins))
    results: list[object] = [None] * len(logins)

    def login(i: int, user: str) -> None:
        try:
            with smtplib.SMTP_SSL(
                "127.0.0.1", server.tls_port, context=server.tls_context(), timeout=30
            ) as client:
                client.ehlo("client.test")
                barrier.wait(timeout=30)
                results[i] = client.login(user, PASSWORDS[user])[0]
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=login, args=(i, u)) for i, u in enumerate(logins)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [235] * len(logins), results


def test_auth_cooldown_across_connections(start_server):
    # 2 failures per IP within the window trigger the cool-down; per-connection limit is higher.
    server = start_server({"smtp.auth_failures_per_ip": 2, "smtp.max_auth_failures": 5})
    conn = server.connect(implicit_tls=True)
    assert conn.reply()[-1].startswith("220 ")
    conn.cmd("EHLO client.test")
    for _ in range(2):
        r = conn.cmd(f"AUTH PLAIN {plain_token('alice', 'bad')}")
        assert r[-1].startswith("535 5.7.8"), r
    # A third failure: either still counted (535) or already refused (454).
    r = conn.cmd(f"AUTH PLAIN {plain_token('alice', 'bad')}")
    assert r[-1].startswith(("535 5.7.8", "454 4.7.0")), r
    conn.close()
    # New connection, right password: refused during the cool-down.
    conn = server.connect(implicit_tls=True)
    assert conn.reply()[-1].startswith("220 ")
    conn.cmd("EHLO client.test")
    r = conn.cmd(f"AUTH PLAIN {plain_token('alice', PASSWORDS['alice'])}")
    assert r[-1].startswith("454 4.7.0"), r
    r = conn.cmd("MAIL FROM:<alice@example.com>")
    assert r[-1].startswith("530 5.7.0"), r
    conn.close()


def test_spool_full(start_server):
    # The transport path is a regular file: deliveries fail and stay queued; max_messages = 1.
    server = start_server(
        {"spool.max_messages": 1, "sender.transport.path": "blocked"},
        setup=lambda root: (root / "blocked").write_bytes(b"not a folder"),
    )
    s = smtplib.SMTP_SSL("127.0.0.1", server.tls_port, context=server.tls_context(), timeout=15)
    s.login("alice", PASSWORDS["alice"])
    assert s.mail("alice@example.com")[0] == 250
    assert s.rcpt("rcpt@example.net")[0] == 250
    code, resp = s.data(make_message("first"))
    assert code == 250, (code, resp)
    # Second message: 452 4.3.1 at MAIL FROM, or after DATA.
    code, resp = s.mail("alice@example.com")
    if code == 250:
        assert s.rcpt("rcpt@example.net")[0] == 250
        code, resp = s.data(make_message("second"))
    assert (code, resp[:5]) == (452, b"4.3.1"), (code, resp)
    # The connection stays usable.
    assert s.noop()[0] == 250
    s.quit()
    assert server.alive()


# --------------------------------------------------------------------------- timeouts


@pytest.mark.timeout(60)
def test_slow_command_cut_off(start_server):
    """One byte a second: the whole command line must arrive within command_timeout_secs."""
    server = start_server({"smtp.command_timeout_secs": 2})
    conn = server.connect()
    assert conn.reply()[-1].startswith("220 ")
    command = b"EHLO a-very-slow-client.example.net\r\n"  # would take ~37 s
    start = time.monotonic()
    cut_off_at = None
    got = b""
    for byte in command:
        try:
            conn.sock.sendall(bytes([byte]))
        except OSError:
            cut_off_at = time.monotonic()
            break
        conn.sock.settimeout(1.0)  # the pause between bytes is the point of this test
        try:
            chunk = conn.sock.recv(4096)
        except socket.timeout:
            chunk = None
        except OSError:
            cut_off_at = time.monotonic()
            break
        if chunk is not None:
            got += chunk
            if not chunk or b"421" in got:
                cut_off_at = time.monotonic()
                break
        if time.monotonic() - start > 15:
            break
    assert cut_off_at is not None, f"not cut off after {time.monotonic() - start:.1f}s; got {got!r}"
    elapsed = cut_off_at - start
    assert elapsed < 7, f"cut off only after {elapsed:.1f}s"
    assert not got or got.startswith(b"421"), got
    conn.close()


@pytest.mark.timeout(60)
def test_tls_handshake_timeout_implicit(start_server):
    server = start_server({"smtp.tls_handshake_timeout_secs": 2})
    sock = socket.create_connection(("127.0.0.1", server.tls_port), timeout=10)
    start = time.monotonic()
    sock.settimeout(10)
    try:
        data = sock.recv(4096)  # never send a ClientHello
    except (ConnectionResetError, socket.timeout) as e:
        data = e
    elapsed = time.monotonic() - start
    sock.close()
    assert data == b"" or isinstance(data, ConnectionResetError), f"got {data!r} after {elapsed:.1f}s"
    assert elapsed < 7, f"closed only after {elapsed:.1f}s"


@pytest.mark.timeout(60)
def test_tls_handshake_timeout_starttls(start_server):
    server = start_server({"smtp.tls_handshake_timeout_secs": 2})
    conn = server.connect()
    assert conn.reply()[-1].startswith("220 ")
    conn.cmd("EHLO client.test")
    assert conn.cmd("STARTTLS")[-1].startswith("220")
    start = time.monotonic()
    data = conn.wait_closed(timeout=10)  # never send a ClientHello
    elapsed = time.monotonic() - start
    assert data == b"", data
    assert elapsed < 7, f"closed only after {elapsed:.1f}s"


# --------------------------------------------------------------------------- auth timing


def test_auth_timing_does_not_reveal_accounts(start_server):
    min_ms = 200
    server = start_server({
        "smtp.auth_min_duration_ms": min_ms,
        "smtp.max_auth_failures": 100,
        "smtp.max_errors": 100,  # failed AUTH may also count as protocol errors
        "smtp.auth_failures_per_ip": 1000,
    })
    conn = server.connect(implicit_tls=True)
    assert conn.reply()[-1].startswith("220 ")
    conn.cmd("EHLO client.test")
    unknown, known, good = [], [], []
    tokens = [
        (unknown, plain_token("nobody-here", "wrong-password")),
        (known, plain_token("alice", "wrong-password")),
    ]
    for _ in range(5):
        for samples, token in tokens:
            t0 = time.monotonic()
            r = conn.cmd(f"AUTH PLAIN {token}")
            samples.append(time.monotonic() - t0)
            assert r[-1].startswith("535 5.7.8"), r
    conn.close()
    conn = server.connect(implicit_tls=True)
    conn.reply()
    conn.cmd("EHLO client.test")
    t0 = time.monotonic()
    r = conn.cmd(f"AUTH PLAIN {plain_token('alice', PASSWORDS['alice'])}")
    good.append(time.monotonic() - t0)
    assert r[-1].startswith("235"), r
    conn.close()
    print(f"unknown={unknown}\nknown={known}\ngood={good}")
    for name, samples in (("unknown user", unknown), ("wrong password", known), ("success", good)):
        assert min(samples) >= min_ms / 1000, f"{name}: {samples}"
    diff = abs(statistics.median(unknown) - statistics.median(known))
    assert diff < 0.100, f"medians differ by {diff * 1000:.0f} ms: unknown={unknown} known={known}"
