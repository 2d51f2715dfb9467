#!/usr/bin/env python3
"""A loopback front for fake-gcs-server that gives every request a Host header with the port.

Google's Rust client (google-cloud-gax-internal's `host::header`) sends `Host: 127.0.0.1`
without the port, and fake-gcs-server (1.54, and upstream as of 2026-07) builds the `Location`
of a resumable upload session from that header, not from `-external-url`: the client then PUTs
the object's data to port 80 and retries for ever. Every object of 16 MiB or more is uploaded
resumably, so without this front no large object reaches the stack.

Each connection: the request head is read, its `Host` set to `--upstream-host` (fake-gcs-server's
own `127.0.0.1:<port>`, so the session `Location` points there and the bulk upload goes straight
to fake-gcs-server) and `Connection: close` set (one request per connection, so only the first
head needs rewriting), then bytes are copied both ways until the server closes.

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

HEAD_LIMIT = 64 * 1024
CHUNK = 1 << 20
DROPPED = (b"host", b"connection", b"keep-alive", b"proxy-connection")


def rewrite_head(head: bytes, host: str) -> bytes:
    """The request head (up to and without the blank line) with `Host: host` and
    `Connection: close` in place of the client's."""
    lines = head.split(b"\r\n")
    out = [lines[0]]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name not in DROPPED:
            out.append(line)
    out.append(b"Host: " + host.encode("ascii"))
    out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n"


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copies src to dst until src's end of stream, then half-closes dst."""
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
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


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
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
            if len(data) > HEAD_LIMIT:
                client.sendall(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                               b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                return
        head, rest = data.split(b"\r\n\r\n", 1)
        try:
            upstream = socket.create_connection(self.server.upstream, timeout=30)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
            return
        upstream.settimeout(None)
        with upstream:
            upstream.sendall(rewrite_head(head, self.server.host) + rest)
            up = threading.Thread(target=pump, args=(client, upstream), daemon=True)
            up.start()
            pump(upstream, client)
            # The response is complete: wake the other copy if the client keeps its side open.
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            up.join(timeout=5)


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
