"""fake-gcp/gcs_front.py against a small HTTP/1.1 upstream of the test's own: the Host header
rewritten on every request, connections kept, bodies framed by Content-Length or chunks."""

import http.client
import http.server
import importlib.util
import json
import socket
import threading

import pytest

from fakegcp_lib import ROOT


def load_front():
    spec = importlib.util.spec_from_file_location("gcs_front", ROOT / "fake-gcp" / "gcs_front.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Upstream(http.server.ThreadingHTTPServer):
    """Answers each request with what it saw: its Host, its body's length and digest, and
    which of the server's connections carried it."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Echo)
        self.connections = 0
        self.lock = threading.Lock()


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.connection_no = self.server.connections

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n"):
                        pass
                    return out
                out += self.rfile.read(n)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def answer(self):
        body = self.body()
        reply = json.dumps({
            "host": self.headers.get("Host"),
            "bytes": len(body),
            "sum": sum(body) % 65521,
            "connection": self.connection_no,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass


@pytest.fixture()
def front():
    """(front port, upstream server): both on free loopback ports, stopped after the test."""
    gcs_front = load_front()
    upstream = Upstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    server = gcs_front.Front(0, upstream.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], upstream
    finally:
        server.shutdown()
        server.server_close()
        upstream.shutdown()
        upstream.server_close()


def ask(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def test_requests_on_one_connection_share_one_upstream_connection_with_the_port_in_host(front):
    port, upstream = front
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", "/storage/v1/b", skip_host=True)  # as Google's client: no port
    conn.putheader("Host", "127.0.0.1")
    conn.endheaders()
    first = conn.getresponse()
    seen = [json.loads(first.read())]
    payload = bytes(range(256)) * 9000  # 2.3 MB: more than one read of the front's buffer
    status, second = ask(conn, "POST", "/upload", payload, {"Content-Length": str(len(payload))})
    seen.append(second)
    status3, third = ask(conn, "GET", "/storage/v1/b/x")
    seen.append(third)
    conn.close()
    assert first.status == status == status3 == 200
    want_host = f"127.0.0.1:{upstream.server_address[1]}"
    assert [s["host"] for s in seen] == [want_host] * 3
    assert second["bytes"] == len(payload) and second["sum"] == sum(payload) % 65521
    assert {s["connection"] for s in seen} == {1}, "one upstream connection per client connection"


def test_a_chunked_body_reaches_the_server_whole(front):
    port, _ = front
    parts = [b"a" * 10, b"b" * 70000, b"c"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("PUT", "/o", body=iter(parts), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    got = json.loads(r.read())
    # The connection is still usable after a chunked request.
    status, again = ask(conn, "GET", "/after")
    conn.close()
    body = b"".join(parts)
    assert r.status == 200 and got["bytes"] == len(body) and got["sum"] == sum(body) % 65521
    assert status == 200 and again["connection"] == got["connection"]


def test_a_head_too_large_is_refused_and_an_absent_server_is_a_bad_gateway(front):
    port, upstream = front
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"x" * 70000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    upstream.shutdown()
    upstream.server_close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().status == 502
    conn.close()
