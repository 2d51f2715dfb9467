#!/usr/bin/env python3
"""A partner-side SMTP relay: aiosmtpd with STARTTLS (or implicit TLS) and AUTH, storing mail.

    PARTNER_SMTP_USER=... PARTNER_SMTP_PASSWORD=... smtp.py --state-dir DIR [--tls starttls|implicit]

Makes a throwaway CA and server certificate in DIR (DIR/smtp-ca.pem is what a client trusts),
requires TLS before AUTH and AUTH before MAIL, and stores each message as DIR/mail/<n>.eml
(written atomically) with DIR/mail/<n>.json holding the envelope. Credentials come from the
environment, never from the command line. Prints {"ready": true, "port": N, "ca": ..., "mail": ...}.
"""

import argparse
import asyncio
import hmac
import itertools
import json
import os
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402


class Store:
    def __init__(self, folder):
        self.folder = folder
        self.counter = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        base = os.path.join(self.folder, f"{n:04d}")
        meta = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos}
        common.write_atomic(base + ".json", json.dumps(meta).encode())
        common.write_atomic(base + ".eml", envelope.original_content)
        common.log(f"smtp: stored message {n} for {len(envelope.rcpt_tos)} recipients")
        return "250 OK stored"


class Authenticator:
    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and hmac.compare_digest(auth_data.login, self.user)
            and hmac.compare_digest(auth_data.password, self.password)
        )
        common.log(f"smtp: auth {mechanism} {'accepted' if ok else 'refused'}")
        return AuthResult(success=ok, handled=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--tls", choices=["starttls", "implicit"], default="starttls")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    user = os.environ.get("PARTNER_SMTP_USER")
    password = os.environ.get("PARTNER_SMTP_PASSWORD")
    if not user or not password:
        sys.exit("smtp.py: set PARTNER_SMTP_USER and PARTNER_SMTP_PASSWORD")

    state = os.path.abspath(a.state_dir)
    mail = os.path.join(state, "mail")
    os.makedirs(mail, exist_ok=True)
    ca, cert, key = common.throwaway_tls(state, "smtp")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    port = a.port or common.free_port()
    kwargs = dict(
        hostname="127.0.0.1",
        port=port,
        authenticator=Authenticator(user, password),
        auth_required=True,
        ident="partner-smtp",
    )
    if a.tls == "starttls":
        kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    else:
        kwargs.update(ssl_context=ctx, auth_require_tls=False)
    controller = Controller(Store(mail), **kwargs)
    controller.start()
    common.stop_on_sigterm(controller.stop)
    common.announce(port=port, ca=ca, mail=mail, tls=a.tls)
    asyncio.run(asyncio.Event().wait())


if __name__ == "__main__":
    main()
