"""A real Postfix (Debian's package) as a test's outbound MTA, on loopback, with its own directories.

Usage::

    async with Postfix(routes={"member.test": sink.port}) as mta:
        mta.port        # its smtpd on 127.0.0.1
        mta.log()       # its log (maillog_file), for assertion messages
        mta.queued()    # files still in its queue

Each instance has its own configuration directory (main.cf, master.cf), queue and data
directories (in a directory of its own under the system's temporary directory, which the
``postfix`` user can reach: pytest's tmp_path is private to root; removed at stop), and its own smtpd on a free loopback port; ``routes`` sends each domain to a
loopback port (transport_maps with literal addresses: no DNS). Nothing runs chrooted and
nothing is written under /etc or /var: the queue belongs to ``mail_owner`` as Postfix
requires, which is why it needs root (CI runs as root) and the ``postfix`` user and
``postdrop`` group that the Debian package creates. Retries come quickly (queue_run_delay
and the backoff times of 1 s) so that a report our relay answered 451 to comes back soon.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.sink import free_port

POSTFIX = "/usr/sbin/postfix"
STOP_SECONDS = 30.0
MASTER_CF = """\
{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 1 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def available() -> bool:
    """Postfix is installed and this process may run it (root, and the package's user and group)."""
    if not os.path.exists(POSTFIX) or os.geteuid() != 0:
        return False
    try:
        import grp
        import pwd

        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return False
    return True


class Postfix:
    def __init__(self, routes: dict[str, int], *, port: int = 0, hostname: str = "outbound.test") -> None:
        self.routes = routes
        self.hostname = hostname
        self.port = port  # 0: a free one, chosen at start
        self.base = Path()  # made at start

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    def _main_cf(self) -> str:
        transports = ", ".join(f"{domain}=smtp:[127.0.0.1]:{port}" for domain, port in self.routes.items())
        settings: dict[str, Any] = {
            "compatibility_level": "3.6",
            "queue_directory": self.base / "queue",
            "data_directory": self.base / "data",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": "test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": " ".join(self.routes),
            "transport_maps": f"inline:{{ {transports} }}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "maillog_file": self.base / "maillog",
            "maillog_file_prefixes": self.base,
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "smtp_connection_cache_on_demand": "no",
        }
        return "".join(f"{name} = {value}\n" for name, value in settings.items())

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTFIX, "-c", str(self.config_dir), *args], capture_output=True, text=True,
                              timeout=60, check=False)

    def start(self) -> Postfix:
        self.base = Path(tempfile.mkdtemp(prefix="estampille-postfix-"))
        self.base.chmod(0o755)
        self.config_dir.mkdir()
        (self.base / "data").mkdir()
        (self.base / "queue").mkdir()
        self.port = self.port or free_port()
        (self.config_dir / "main.cf").write_text(self._main_cf())
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{self.port}"))
        shutil.chown(self.base / "data", "postfix")
        done = self._postfix("start")
        if done.returncode != 0:
            log = self.log()
            shutil.rmtree(self.base, ignore_errors=True)
            raise RuntimeError(f"postfix start failed: {done.stdout}{done.stderr}\n{log}")
        return self

    def stop(self) -> None:
        """Stop it and wait for its master to exit (it still writes in ``base`` until then)."""
        pid_file = self.base / "queue" / "pid" / "master.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        self._postfix("stop")
        deadline = time.monotonic() + STOP_SECONDS
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        path = self.base / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def queued(self) -> list[str]:
        """Files in the queues that hold mail not yet delivered (incoming, active, deferred, hold)."""
        queue = self.base / "queue"
        return [str(p.relative_to(queue)) for name in ("incoming", "active", "deferred", "hold")
                for p in (queue / name).rglob("*") if p.is_file()]

    async def __aenter__(self) -> Postfix:
        return await asyncio.to_thread(self.start)  # postfix start waits for its master

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
