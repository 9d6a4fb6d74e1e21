"""docs/install.md, followed as far as a test can: its configuration with the paths
moved under a temporary directory and the ports and upstream pointed at loopback,
then every `estampille` command of its shell blocks, as written (no --config: the
system configuration path is moved too), in order: check-config naming the files
still missing, dkim-keygen, the TLS files, passwd, admin-token, check-config; then
the relay it describes: a message submitted over STARTTLS with AUTH leaves signed
with the documented selector, /metrics, the admin API and `estampille queue` answer."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import shlex
import smtplib
import ssl
import sys
import time
from pathlib import Path

import aiohttp

from relay import cli as estampille
from relay.cli import main
from relay.config import Config
from tests.integration.test_relay import message
from tests.support.relay import running
from tests.support.sink import Sink, free_port
from tests.support.tlscert import self_signed
from tests.unit.test_guide import blocks

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "docs" / "install.md"
PROGRAM = "/opt/estampille/venv/bin/estampille"
PASSWORD = "un mot de passe assez long"


def documented_commands(root: Path) -> list[list[str]]:
    """The arguments of each `estampille` command in install.md's shell blocks, in order, with the
    guide's directories moved under ``root``."""
    commands = []
    for block in blocks(INSTALL, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if PROGRAM in words:
                argv = words[words.index(PROGRAM) + 1:]
                commands.append([moved(word, root) for word in argv])
    return commands


def moved(text: str, root: Path) -> str:
    return text.replace("/var/lib/estampille", str(root / "var")).replace("/etc/estampille", str(root / "etc"))


def cli(*argv: str, stdin: str = "", expect: int = 0) -> str:
    """Run an `estampille` command as the guide does; its standard output and error."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        saved, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # --version, as argparse does it
            code = exit_.code
        finally:
            sys.stdin = saved
    assert code == expect, (argv, err.getvalue())
    return out.getvalue() + err.getvalue()


def adapted(config: str, root: Path, sink_port: int, metrics_port: int) -> str:
    """The guide's configuration, moved under ``root`` and onto loopback ports."""
    text = moved(config, root)
    for old, new in (
        ('listen_host = "0.0.0.0"', 'listen_host = "127.0.0.1"'),
        ("listen_port = 587", "listen_port = 0"),
        ("listen_port = 8025", "listen_port = 0"),
        ("metrics_listen_port = 9325", f"metrics_listen_port = {metrics_port}"),
        ('host = "smtp.fournisseur.example"', 'host = "127.0.0.1"'),
        ("port = 587\n", f"port = {sink_port}\n"),
        ('tls = "starttls"', 'tls = "none"'),
    ):
        assert old in text, old
        text = text.replace(old, new, 1)
    return re.sub(r'^(username|password) = .*\n', "", text, flags=re.M)  # the sink takes no AUTH


def submit(port: int) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.starttls(context=context)
        client.login("convocations", PASSWORD)
        client.sendmail("convocations@commune.example", ["elu@example.net"], message(subject="essai"))
        return client.noop()


async def test_the_installation_guide_gives_a_running_relay(tmp_path: Path, monkeypatch):
    (documented,) = blocks(INSTALL, "toml")
    commands = documented_commands(tmp_path)
    assert [argv[0] for argv in commands] == [
        "--version", "check-config", "dkim-keygen", "passwd", "admin-token", "check-config", "queue"]
    version, early_check, keygen, passwd, admin_token, check, queue = commands
    (tmp_path / "var").mkdir(mode=0o700)
    (tmp_path / "etc" / "tls").mkdir(parents=True)
    path = tmp_path / "etc" / "estampille.toml"
    monkeypatch.setattr(estampille, "SYSTEM_CONFIG", path)  # where the guide's commands look without --config
    monkeypatch.delenv("ESTAMPILLE_CONFIG", raising=False)
    metrics_port = free_port()
    async with Sink() as sink:
        path.write_text(adapted(documented, tmp_path, sink.port, metrics_port), encoding="utf-8")
        # Step 3, then 4: check-config names the files the next steps make.
        assert (await asyncio.to_thread(cli, *version)).startswith("estampille ")
        missing = await asyncio.to_thread(cli, *early_check, expect=estampille.EXIT_CONFIG)
        assert "fullchain.pem" in missing and "estampille1.rsa.pem" in missing and "credentials" in missing
        # Step 5: the keys land where the configuration expects them.
        printed = await asyncio.to_thread(cli, *keygen)
        assert "estampille1._domainkey.commune.example. IN TXT" in printed
        # Step 6: the TLS files (certbot's, here self-signed), the SMTP user.
        cert, key = self_signed(tmp_path / "etc" / "tls", "relais.commune.example")
        cert.rename(tmp_path / "etc" / "tls" / "fullchain.pem")
        key.rename(tmp_path / "etc" / "tls" / "privkey.pem")
        await asyncio.to_thread(cli, *passwd, stdin=PASSWORD + "\n")
        # Step 7: an administrator token; its hash goes in the configuration, which then checks.
        issued = await asyncio.to_thread(cli, *admin_token)
        token = re.search(r"token: (\S+)", issued).group(1)
        token_hash = re.search(r"hash:\s+([0-9a-f]{64})", issued).group(1)
        path.write_text(re.sub(r'token_hashes = \["[0-9a-f]+"\]', f'token_hashes = ["{token_hash}"]',
                               path.read_text()), encoding="utf-8")
        assert "configuration OK" in await asyncio.to_thread(cli, *check)

        async with running(Config.from_file(path)) as service, aiohttp.ClientSession() as http:
            code, _ = await asyncio.to_thread(submit, service.smtp_port)
            assert code == 250
            (copy,) = await sink.wait_for(1)
            assert re.search(rb"DKIM-Signature:[^:]*d=commune\.example;[^:]*s=estampille1;", copy.data)
            assert b"https://accuse.commune.example/a/" in copy.data
            deadline = time.monotonic() + 20
            while True:  # the sink has the copy; the relay records the outcome right after
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                    if 'estampille_deliveries{state="delivered"} 1.0' in await response.text():
                        break
                assert time.monotonic() < deadline, "the delivery never showed in /metrics"
                await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{service.tracker.port}/api/v1/messages",
                                headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200
        # Step 10: the queue, read from the same data without --config.
        assert "no deferred or failed deliveries" in await asyncio.to_thread(cli, *queue)
