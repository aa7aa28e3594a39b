"""A small fault-injecting HTTP forwarder for the SES end-to-end tests.

moto (the AWS stand-in the SES tests send to) always answers SendEmail the same way: it cannot
throttle, fail with a 5xx, or be unreachable on cue. This proxy sits between Outbox and moto_server,
forwards every request unchanged, and answers SES v2 `SendEmail` calls
(`POST /v2/email/outbound-emails`) from a script instead when a test asks for a fault. It is a
home-made fake only for those failure shapes; successful sends always reach real moto.

It also starts "down" on request: its socket is then bound (so the port is reserved) but not
listening, and the kernel refuses connections to it (ECONNREFUSED), exactly like an endpoint
that is not running. `come_up()` starts listening on the same port.

Error replies follow SES v2's REST-JSON protocol as the Rust SDK parses it
(aws-sdk-sesv2 `json_errors.rs`): the error code from the `x-amzn-ErrorType` header, else the
body's `code` / `__type`; the message from the body's `message` / `Message`. moto's own errors
(e.g. MessageRejected) have the same shape.
"""

from __future__ import annotations

import http.client
import json
import socketserver
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SEND_EMAIL = ("POST", "/v2/email/outbound-emails")

# Hop-by-hop and length headers are not copied between the two connections.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


@dataclass
class Reply:
    """A canned HTTP answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def ses_error(status: int, code: str | None, message: str) -> Reply:
    """An SES v2 error as the service sends it; code None gives a body without any error code."""
    headers = {"Content-Type": "application/json", "x-amzn-RequestId": str(uuid.uuid4())}
    body: dict[str, str] = {"message": message}
    if code is not None:
        headers["x-amzn-ErrorType"] = code
        body = {"__type": code, "message": message}
    return Reply(status, json.dumps(body).encode(), headers)


@dataclass
class Seen:
    method: str
    path: str
    body: bytes
    faulted: bool

    def json(self):
        return json.loads(self.body)


class FaultProxy:
    """proxy = FaultProxy("http://127.0.0.1:5000"); proxy.send_email_fault = fn; proxy.start().

    `send_email_fault(n)` is called for the n-th SendEmail (1-based) and returns a Reply to answer
    with instead of forwarding, or None to forward to moto.
    """

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.send_email_fault = lambda n: None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._send_emails = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        self._httpd.proxy = self
        self._httpd.server_bind()  # bound, not yet listening: connections are refused
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._thread is not None

    def start(self) -> "FaultProxy":
        """Listens and serves (a proxy made to start down stays refusing until this)."""
        if self._thread is None:
            self._httpd.server_activate()
            self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
            self._thread.start()
        return self

    come_up = start

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    # --- what arrived
    def send_emails(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (s.method, s.path) == SEND_EMAIL]

    @property
    def send_email_count(self) -> int:
        return len(self.send_emails())

    def _next_send_email(self) -> int:
        with self._lock:
            self._send_emails += 1
            return self._send_emails

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def server_bind(self):
        # HTTPServer.server_bind would reverse-resolve the address (getfqdn); not needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self):
        proxy = self.server.proxy
        body = self._read_body()
        path = self.path
        reply = None
        if (self.command, urlsplit(path).path) == SEND_EMAIL:
            reply = proxy.send_email_fault(proxy._next_send_email())
        proxy._record(Seen(self.command, urlsplit(path).path, body, reply is not None))
        if reply is None:
            reply = self._forward(proxy, body)
        self._answer(reply)

    def _forward(self, proxy: FaultProxy, body: bytes) -> Reply:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = {
                k: v
                for k, v in resp.getheaders()
                if k.lower() not in _HOP and k.lower() not in ("server", "date")
            }
            return Reply(resp.status, data, kept)
        except (OSError, http.client.HTTPException) as e:
            return Reply(502, f"fault proxy: upstream failed: {e}".encode(), {})
        finally:
            conn.close()

    def _answer(self, reply: Reply):
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle
