"""Helpers shared by the partner stand-ins: free ports, readiness lines, throwaway TLS.

Every stand-in binds 127.0.0.1 on a free port, keeps its state in the folder it is given, and
prints one JSON line with "ready": true once it accepts connections; the process that started
it stops it (SIGTERM to its process group). Nothing here is a real credential: certificates and
keys are made at start and live only in the state folder.
"""

import datetime
import ipaddress
import json
import os
import signal
import socket
import sys
import time


def free_port():
    """Returns a port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    """Waits until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def announce(**fields):
    """Prints the readiness line the tests wait for."""
    print(json.dumps({"ready": True, **fields}), flush=True)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def stop_on_sigterm(callback=None):
    """Exits cleanly on SIGTERM/SIGINT."""

    def handler(signum, frame):
        if callback:
            callback()
        sys.exit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def write_atomic(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def https_server(handler, state_dir, name, port=0):
    """An HTTPS server of `handler` on 127.0.0.1 (`port`, or a free one) with a throwaway
    certificate for `name`; returns (server, port, CA path)."""
    import ssl
    from http.server import ThreadingHTTPServer

    ca, cert, key = throwaway_tls(state_dir, name)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    port = port or free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return server, port, ca


def throwaway_tls(state_dir, name):
    """Makes a CA and a server certificate for 127.0.0.1/localhost; returns (ca, cert, key) paths.

    A restarted server in the same state dir keeps its certificate (clients trust the same CA)."""
    existing = tuple(os.path.join(state_dir, f"{name}-{p}.pem") for p in ("ca", "cert", "key"))
    if all(os.path.exists(p) for p in existing):
        return existing
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"throwaway {name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(state_dir, f"{name}-{p}.pem") for p in ("ca", "cert", "key"))
    pem = serialization.Encoding.PEM
    write_atomic(paths[0], ca.public_bytes(pem))
    write_atomic(paths[1], cert.public_bytes(pem))
    write_atomic(
        paths[2],
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    os.chmod(paths[2], 0o600)
    return paths
