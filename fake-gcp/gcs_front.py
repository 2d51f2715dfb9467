#!/usr/bin/env python3
"""A loopback front for fake-gcs-server that gives every request a Host header with the port.

Google's Rust client (google-cloud-gax-internal's `host::header`) sends `Host: 127.0.0.1`
without the port, and fake-gcs-server (1.54, and upstream as of 2026-07) builds the `Location`
of a resumable upload session from that header, not from `-external-url`: the client then PUTs
the object's data to port 80 and retries for ever. Every object of 16 MiB or more is uploaded
resumably, so without this front no large object reaches the stack.

Each client connection gets one connection to fake-gcs-server, kept as long as the client keeps
its own (HTTP/1.1 keep-alive: a round trip to the bucket costs no new connections, as with the
real service). Requests are read one after the other: each head gets `Host:
<--upstream-host>` (fake-gcs-server's own `127.0.0.1:<port>`, so a session `Location` points
there and the bulk of an upload goes straight to fake-gcs-server), and its body is passed on as
its `Content-Length` or chunked framing says. Responses are copied back untouched.

    gcs_front.py --port PORT --upstream-port PORT

Standard library only; prints a line `{"ready": true, ...}` once it listens.
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import sys
import threading
from typing import BinaryIO

HEAD_LIMIT = 64 * 1024
CHUNK = 1 << 20
# Hop-by-hop headers of the client's hop that do not go on (Host is set by the front).
DROPPED = (b"host", b"proxy-connection")


class BadRequest(Exception):
    """A request the front cannot frame: answered with `status` and the connection closed."""

    def __init__(self, status: bytes):
        super().__init__(status.decode("ascii", "replace"))
        self.status = status


def rewrite_head(head: bytes, host: str) -> bytes:
    """The request head (up to and without the blank line) with `Host: host` in place of the
    client's, ending with the blank line."""
    lines = head.split(b"\r\n")
    out = [lines[0]]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name not in DROPPED:
            out.append(line)
    out.append(b"Host: " + host.encode("ascii"))
    return b"\r\n".join(out) + b"\r\n\r\n"


def body_framing(head: bytes) -> tuple[bool, int]:
    """How the request's body is framed: (chunked, content length); (False, 0) for none."""
    chunked, length = False, 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"transfer-encoding":
            chunked = value.split(b",")[-1].strip() == b"chunked"
            if not chunked:
                raise BadRequest(b"501 Not Implemented")
        elif name == b"content-length":
            if not value.isdigit():
                raise BadRequest(b"400 Bad Request")
            length = int(value)
    return chunked, (0 if chunked else length)


def read_head(reader: BinaryIO) -> bytes | None:
    """The next request head without its blank line; None at the end of the stream."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(HEAD_LIMIT + 1)
        if not line:
            if lines:
                raise BadRequest(b"400 Bad Request")
            return None
        size += len(line)
        if size > HEAD_LIMIT:
            raise BadRequest(b"431 Request Header Fields Too Large")
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # a stray blank line between requests (RFC 9112 section 2.2)
            return b"\r\n".join(lines)
        lines.append(line.rstrip(b"\r\n"))


def copy_exact(reader: BinaryIO, dst: socket.socket, n: int) -> None:
    """Copies exactly n bytes from reader to dst."""
    while n > 0:
        data = reader.read1(min(n, CHUNK))
        if not data:
            raise ConnectionError("client closed within a request body")
        dst.sendall(data)
        n -= len(data)


def copy_chunked(reader: BinaryIO, dst: socket.socket) -> None:
    """Copies a chunked body (chunks, the last one, trailers) from reader to dst as it is."""
    while True:
        line = reader.readline(HEAD_LIMIT)
        if not line.endswith(b"\n"):
            raise ConnectionError("chunk size line cut short")
        dst.sendall(line)
        size = line.split(b";", 1)[0].strip()
        try:
            n = int(size, 16)
        except ValueError:
            raise ConnectionError(f"bad chunk size {size!r}") from None
        if n == 0:
            break
        copy_exact(reader, dst, n + 2)  # the chunk and its CRLF
    while True:  # trailers, up to the blank line
        line = reader.readline(HEAD_LIMIT)
        if not line.endswith(b"\n"):
            raise ConnectionError("trailer cut short")
        dst.sendall(line)
        if line in (b"\r\n", b"\n"):
            return


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copies src to dst until src's end of stream, then shuts dst down."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if n == 0:
                break
            dst.sendall(view[:n])
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def no_delay(sock: socket.socket) -> None:
    """Small writes (a head, a body's last bytes) go at once, not held for an acknowledgement."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Front(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, port: int, upstream_port: int):
        super().__init__(("127.0.0.1", port), Handler)
        self.upstream = ("127.0.0.1", upstream_port)
        self.host = f"127.0.0.1:{upstream_port}"


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client: socket.socket = self.request
        no_delay(client)
        reader = client.makefile("rb", buffering=CHUNK)
        upstream: socket.socket | None = None
        back: threading.Thread | None = None
        try:
            while True:
                head = read_head(reader)
                if head is None:
                    break
                chunked, length = body_framing(head)
                if upstream is None:
                    try:
                        upstream = socket.create_connection(self.server.upstream, timeout=30)
                    except OSError:
                        raise BadRequest(b"502 Bad Gateway") from None
                    upstream.settimeout(None)
                    no_delay(upstream)
                    # Responses go back untouched, in order, for as long as both keep the
                    # connection: the server closing it closes the client's.
                    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
                    back.start()
                upstream.sendall(rewrite_head(head, self.server.host))
                if chunked:
                    copy_chunked(reader, upstream)
                elif length:
                    copy_exact(reader, upstream, length)
        except BadRequest as e:
            if upstream is None:
                try:
                    client.sendall(b"HTTP/1.1 " + e.status + b"\r\nContent-Length: 0\r\n"
                                   b"Connection: close\r\n\r\n")
                except OSError:
                    pass
        except (OSError, ConnectionError):
            pass
        finally:
            if upstream is not None:
                # The client is done sending: the server answers what it has, then closes.
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                if back is not None:
                    back.join(timeout=30)
                upstream.close()
            reader.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    args = p.parse_args()
    with Front(args.port, args.upstream_port) as server:
        print(json.dumps({"ready": True, "port": args.port, "upstream": server.host}), flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
