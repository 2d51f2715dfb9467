#!/usr/bin/env python3
"""A partner's SFTP server: Debian's OpenSSH sshd on 127.0.0.1, key-only, SFTP-only.

    sshd.py --state-dir DIR --authorized-keys FILE [--user NAME] [--port N]

Runs sshd in the foreground with its own config and a throwaway ed25519 host key in DIR (kept
across restarts with the same DIR, so a restarted server presents the same key). The login is
the user running this script (root in CI): no account is created; `ForceCommand internal-sftp`
makes it SFTP-only (no shell, no TTY, no forwarding). No chroot: the client writes under the
absolute root it is configured with (a folder inside DIR in the tests). Prints
{"ready": true, "port": N, "user": ..., "host_key": "<public key line>", "upload": DIR/upload}.
"""

import argparse
import getpass
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def find_sshd():
    for p in ("/usr/sbin/sshd", shutil.which("sshd")):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("sshd.py: sshd not found (scripts/setup.sh installs openssh-server)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--authorized-keys", required=True)
    ap.add_argument("--user", default=getpass.getuser())
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()

    state = os.path.abspath(a.state_dir)
    upload = os.path.join(state, "upload")
    os.makedirs(upload, exist_ok=True)
    host_key = os.path.join(state, "ssh_host_ed25519_key")
    if not os.path.exists(host_key):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "throwaway-host", "-f", host_key],
            check=True,
        )
    auth_keys = os.path.join(state, "authorized_keys")
    shutil.copyfile(a.authorized_keys, auth_keys)
    os.chmod(auth_keys, 0o600)
    port = a.port or common.free_port()
    config = os.path.join(state, "sshd_config")
    with open(config, "w") as f:
        f.write(
            f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {state}/sshd.pid
AuthorizedKeysFile {auth_keys}
AllowUsers {a.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# the keys live in a temporary folder that sshd's ownership checks would refuse
StrictModes no
AllowTcpForwarding no
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PermitTTY no
Subsystem sftp internal-sftp
ForceCommand internal-sftp -d {upload}
LogLevel VERBOSE
"""
        )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    proc = subprocess.Popen([find_sshd(), "-D", "-e", "-f", config])
    common.stop_on_sigterm(proc.terminate)
    if not common.wait_port(port) or proc.poll() is not None:
        proc.terminate()
        sys.exit(f"sshd.py: sshd did not start on port {port}")
    with open(host_key + ".pub") as f:
        host_pub = f.read().strip()
    common.announce(port=port, user=a.user, host_key=host_pub, upload=upload)
    sys.exit(proc.wait())


if __name__ == "__main__":
    main()
