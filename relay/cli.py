"""The `estampille` command: parses arguments, loads the configuration, calls
the service or a tool, and maps errors to exit codes. No logic of its own.

Exit codes: 0 success, 1 pending (verification) or nothing to do, 2 invalid
input or a proof that does not verify, 3 configuration error, 4 runtime error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from relay.anchor import headers
from relay.anchor import worker as anchor
from relay.config import Config, documented_keys
from relay.errors import AmbiguousError, ConfigError, EstampilleError
from relay.evidence.archive import MAX_RATIO
from relay.evidence.ots_verify import Verification
from relay.ops.backup import backup_data_dir, restore
from relay.ops.retention import PurgeSummary, purge
from relay.store import DB_NAME, Store

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_CONFIG = 3
EXIT_RUNTIME = 4

Handler = Callable[[argparse.Namespace], int]
T = TypeVar("T")

# Where the installation guide puts the configuration: every command reads it without --config.
SYSTEM_CONFIG = Path("/etc/estampille/estampille.toml")
CONFIG_HELP = f"configuration file (default: $ESTAMPILLE_CONFIG, else {SYSTEM_CONFIG} if it exists)"


def config_path(args: argparse.Namespace) -> Path | None:
    """The file named by --config, else $ESTAMPILLE_CONFIG, else the system one if it exists."""
    named = getattr(args, "config", None) or os.environ.get("ESTAMPILLE_CONFIG")
    if named:
        return Path(named)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load_config(args: argparse.Namespace) -> Config:
    """The configuration of :func:`config_path`, else the embedded defaults, with a warning naming their data."""
    path = config_path(args)
    if path is not None:
        return Config.from_file(path)
    config = Config().resolve_paths(Path.cwd())
    print(f"estampille: WARNING: no configuration file (--config, $ESTAMPILLE_CONFIG, {SYSTEM_CONFIG});"
          f" embedded defaults, data directory {config.data_dir}", file=sys.stderr)
    return config


def existing_data(args: argparse.Namespace) -> Config:
    """The configuration of a command that reads the relay's data: refused when there is none to read,
    rather than an empty answer from a directory made on the spot."""
    config = load_config(args)
    if not (config.data_path / DB_NAME).is_file():
        raise ConfigError(f"no relay data in {config.data_dir} (is this the relay's configuration?)")
    return config


def _file_problems(config: Config) -> int:
    """Print each file of the configuration the relay could not load; EXIT_CONFIG if any."""
    from relay.preflight import file_problems

    problems = file_problems(config)
    for problem in problems:
        print(f"estampille: configuration error: {problem}", file=sys.stderr)
    return EXIT_CONFIG if problems else EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from relay.preflight import public_url_problem

    config = load_config(args)
    failed = _file_problems(config)
    if (problem := public_url_problem(config)) is not None:
        print(f"estampille: configuration error: {problem}", file=sys.stderr)
        failed = EXIT_CONFIG
    if failed:
        return failed
    print(f"configuration OK: {config_path(args) or '(embedded defaults)'}")
    print(f"data directory: {config.data_dir}")
    print(f"SMTP intake: {config.smtp.listen_host}:{config.smtp.listen_port}")
    if config.upstream.kind == "smtp":
        print(f"upstream: smtp://{config.upstream.host}:{config.upstream.port} (tls: {config.upstream.tls})")
    else:
        print(f"upstream: maildir {config.data_path / 'outbox'}")
    if args.keys:
        for name, help_text in documented_keys():
            print(f"{name}: {help_text}")
    return EXIT_OK


# -- operations: backup, restore, purge ---------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    config = existing_data(args)
    summary = asyncio.run(backup_data_dir(config.data_path, Path(args.dest), now=time.time()))
    print(f"backup written to {summary.path}: {summary.files} files, {summary.size} octets")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    config = load_config(args)
    summary = asyncio.run(restore(Path(args.src), config.data_path, force=args.force))
    print(f"restored {summary.files} files ({summary.size} octets) into {summary.path}")
    return EXIT_OK


def cmd_purge(args: argparse.Namespace) -> int:
    config = existing_data(args)
    summary = asyncio.run(_purge(config))
    print(f"purged {summary.personal_rows} personal data rows and {summary.messages} messages")
    return EXIT_OK


async def _purge(config: Config) -> PurgeSummary:
    store = await Store.open(config.data_path)
    try:
        return await purge(store, config, now=time.time())
    finally:
        await store.close()


# -- anchoring: ots, record, verify-ots, anchor ----------------------------------

EXIT_PENDING = 1
EXIT_INVALID = 2


async def _on_store(config: Config, job: Callable[[Store], Awaitable[T]]) -> T:
    store = await Store.open(config.data_path)
    try:
        return await job(store)
    finally:
        await store.close()


def _write(path: str, data: bytes) -> int:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        print(f"estampille: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"wrote {path} ({len(data)} bytes)")
    return EXIT_OK


def cmd_ots(args: argparse.Namespace) -> int:
    data = asyncio.run(_on_store(existing_data(args), lambda store: anchor.export_ots(store, args.digest)))
    return _write(args.output, data)


def cmd_record(args: argparse.Namespace) -> int:
    record = asyncio.run(_on_store(existing_data(args), lambda store: store.get_record(args.digest)))
    return _write(args.output, record.body)


def cmd_verify_ots(args: argparse.Namespace) -> int:
    try:
        document, proof = Path(args.record).read_bytes(), Path(args.proof).read_bytes()
    except OSError as exc:
        print(f"invalid: cannot read {exc.filename}: {exc.strerror}")
        return EXIT_INVALID
    source = headers.make_source(
        bitcoind=args.bitcoind, esplora=args.esplora or (), headers_file=Path(args.headers) if args.headers else None
    )
    result = asyncio.run(headers.verify_with(source, document, proof, regtest=args.regtest))
    problem = _anchor_delay(document, result, args.max_anchor_delay)
    if problem:
        print(f"invalid: {problem}")
        return EXIT_INVALID
    print(f"{result.status}: {result.reason}")
    return {"verified": EXIT_OK, "pending": EXIT_PENDING}.get(result.status, EXIT_INVALID)


def _anchor_delay(document: bytes, result: Verification, max_delay: float) -> str | None:
    """Why a verified evidence record's claimed time is not bounded by its anchor; None for any other file."""
    from relay.evidence.bundle_check import CLAIMED_TIME, anchor_delay_problem, claimed_time
    from relay.evidence.records import Record

    if not result.ok or result.block_time is None:
        return None
    try:
        record = Record.from_bytes(document)
    except ValueError:
        return None  # a timestamp of any other file bounds nothing it says
    if record.type not in CLAIMED_TIME:
        return None
    return anchor_delay_problem(record.type, claimed_time(record), result.block_time, result.height, max_delay)


def cmd_anchor(args: argparse.Namespace) -> int:
    config = existing_data(args)
    if args.action == "status":
        lines = asyncio.run(_on_store(config, lambda s: anchor.anchor_status(s, config.anchor, time.time())))
    elif args.now:
        run = asyncio.run(_on_store(config, lambda s: anchor.anchor_now(s, config.anchor, config.tsa)))
        print("\n".join(run.lines))
        return EXIT_RUNTIME if run.unanswered else EXIT_OK
    else:
        print("estampille anchor: give --now or 'status'", file=sys.stderr)
        return EXIT_INVALID
    print("\n".join(lines))
    return EXIT_OK


# -- proofs: proof, verify, admin-token --------------------------------------------


def cmd_proof(args: argparse.Namespace) -> int:
    from relay.proof.gather import build_proof
    from tracker.api import bundle_filename

    config = existing_data(args)
    partial = Path(f"{args.output or 'proof'}.partial")  # renamed once complete: no half-written bundle
    try:
        with open(partial, "wb") as out:
            message_id = asyncio.run(_on_store(config, lambda s: build_proof(
                s, args.message_id, out, now=time.time(), timezone=config.tracker.timezone,
                recipient=args.recipient, submission_id=args.submission)))
        target = Path(args.output or bundle_filename(message_id, args.recipient))
        os.replace(partial, target)
    except OSError as exc:
        print(f"estampille: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_RUNTIME
    except AmbiguousError as exc:
        print(f"estampille: {exc}; add --submission ID:", file=sys.stderr)
        for c in exc.choices:
            print(f"  --submission {c['submission_id']}  received {c['received_at']} from {c['sender']}"
                  f"  {c['subject'] or ''}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from relay.evidence.bundle_check import report_text
    from relay.proof.gather import verify_bundle

    source = headers.make_source(
        bitcoind=args.bitcoind, esplora=args.esplora or (), headers_file=Path(args.headers) if args.headers else None
    )
    report = asyncio.run(verify_bundle(Path(args.bundle), source, regtest=args.regtest,
                                       max_anchor_delay=args.max_anchor_delay, max_tsa_delay=args.max_tsa_delay,
                                       max_ratio=args.max_ratio))
    print(report_text(report, as_json=args.json))
    return report.exit_code


def cmd_admin_token(args: argparse.Namespace) -> int:
    from tracker.admin_auth import new_token

    token, digest = new_token()
    print(f"token: {token}")
    print(f"hash:  {digest}")
    print("Give the token to the administrator (API: 'Authorization: Bearer <token>'; admin pages: log in with it)")
    print(f'and add the hash to the configuration: [admin] token_hashes = ["{digest}"]')
    return EXIT_OK


# -- certify: DKIM keys ----------------------------------------------------------


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from relay.certify import dkim

    config = load_config(args)
    directory = Path(args.dir) if args.dir else config.data_path / "dkim"
    entry = dkim.generate_keys(directory, args.domain, args.selector, args.ed25519_selector or f"{args.selector}-ed")
    print(dkim.keys_report(entry))
    return EXIT_OK


# -- relay core: serve, queue, passwd ------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from relay.service import run

    config = load_config(args)
    # Before the data directory and the keys exist: a wrong path fails here, having changed nothing.
    return _file_problems(config) or run(config, tracker_only=args.tracker_only)


def cmd_queue(args: argparse.Namespace) -> int:
    from relay.outbound import queue

    config = existing_data(args)
    if args.action == "retry":
        if not args.all and not args.ids:
            print("estampille queue retry: give delivery IDs or --all", file=sys.stderr)
            return 2
        count = asyncio.run(queue.retry(config, None if args.all else args.ids))
        print(f"{count} deliveries queued for a new attempt")
        return EXIT_OK
    if args.action == "release":
        count = asyncio.run(queue.release(config, args.ids))
        print(f"{count} held deliveries released")
        return EXIT_OK if count == len(set(args.ids)) else EXIT_RUNTIME
    lines = asyncio.run(queue.describe(config))
    for line in lines:
        print(line)
    if not lines:
        print("no deferred or failed deliveries")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    import getpass
    import secrets

    from relay.smtp.auth import write_password

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("estampille passwd: passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    write_password(Path(args.file), args.user, password, secrets.token_bytes(16))
    print(f"password of {args.user} set in {args.file}")
    return EXIT_OK


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds in ``text``: a number and a unit (s, m, h, d), e.g. ``48h``; hours without a unit."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "h")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 48h, 90m or 2d") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive duration")
    return seconds


def max_anchor_delay_argument(p: argparse.ArgumentParser) -> None:
    """The bound on a record's claimed time (verify-ots, verify): docs/verifying.md."""
    p.add_argument("--max-anchor-delay", metavar="DURATION", type=duration, default="48h",
                   help="fail an evidence record whose anchor proves it existed only longer than this after the"
                        " time it claims (e.g. 48h, 90m, 2d; default 48h)")


def header_source_arguments(p: argparse.ArgumentParser) -> None:
    """The options naming where Bitcoin block headers come from (verify-ots, verify)."""
    group = p.add_argument_group(
        "Bitcoin header source",
        "Give one, to check the proofs that reach a Bitcoin block. Without one, proofs still pending verify"
        " (exit 1) and a proof that reaches a block ends in exit 4 asking for a source.",
    )
    group.add_argument("--bitcoind", metavar="URL", help="bitcoind JSON-RPC URL, http://user:pass@host:8332")
    group.add_argument("--esplora", metavar="URL", action="append",
                       help="Esplora API base URL; give two independent explorers, which must agree")
    group.add_argument("--headers", metavar="FILE", help="file of 'HEIGHT HEX-HEADER' lines")
    group.add_argument("--regtest", action="store_true", help="accept regtest proof of work (tests only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="estampille",
        description="Estampille: a certifying SMTP relay with anchored proofs of delivery and receipt.",
    )
    parser.add_argument("--version", action="version", version=f"estampille {importlib.metadata.version('estampille')}")
    parser.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Handler, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            # SUPPRESS: absent after the command, the --config given before it stays.
            p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)
        p.set_defaults(handler=handler)
        return p

    p = command("check-config", cmd_check_config, "Load the configuration, report problems and the main settings.")
    p.add_argument("--keys", action="store_true", help="also list every configuration key with its help")

    # Each subsystem's commands are declared below, one block each.

    p = command("serve", cmd_serve, "Run the relay: SMTP intake, delivery and the other workers, until SIGTERM.")
    p.add_argument(
        "--tracker-only", action="store_true",
        help="run only the web tracker (acknowledgment pages), as its own process over the same data directory",
    )
    p = command("queue", cmd_queue, "List deferred, held and failed deliveries with their last reply; 'retry' and 'release' re-queue them.")
    p.set_defaults(action="list")
    queue_sub = p.add_subparsers(dest="action", metavar="ACTION")
    r = queue_sub.add_parser("retry", help="make deliveries due now", description="Make deferred or failed deliveries due now.")
    r.add_argument("ids", metavar="ID", type=int, nargs="*", help="delivery IDs as listed by 'estampille queue'")
    r.add_argument("--all", action="store_true", help="every deferred and failed delivery")
    r.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)
    r = queue_sub.add_parser("release", help="retry deliveries held after crashing the relay",
                             description="Make deliveries held after three crashes of the relay in a row due now.")
    r.add_argument("ids", metavar="ID", type=int, nargs="+", help="delivery IDs listed as 'held' by 'estampille queue'")
    r.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)
    p = command(
        "passwd", cmd_passwd, "Set a user's SMTP AUTH password (read from stdin or a prompt, never the command line).",
        config=False,
    )
    p.add_argument("user", metavar="USER", help="user name clients give to AUTH")
    p.add_argument("--file", metavar="PATH", required=True, help="credentials file (smtp.credentials_file)")

    p = command("backup", cmd_backup, "Copy the database and message files consistently, even while the relay runs.")
    p.add_argument("dest", metavar="DEST", help="directory to create (must be absent or empty)")
    p = command("restore", cmd_restore, "Bring a backup back into the data directory (refused while a relay runs on it).")
    p.add_argument("src", metavar="SRC", help="directory written by 'estampille backup'")
    p.add_argument("--force", action="store_true", help="replace the content of a non-empty data directory")
    command("purge", cmd_purge, "Delete personal data and message files past their retention (records are kept).")

    p = command("ots", cmd_ots, "Write the standalone OpenTimestamps proof (.ots) of one evidence record.")
    p.add_argument("digest", metavar="RECORD-DIGEST", help="the record's SHA-256 (hex)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.ots", help="file to write")
    p = command("record", cmd_record, "Write an evidence record's canonical JSON: the file its .ots proof timestamps.")
    p.add_argument("digest", metavar="RECORD-DIGEST", help="the record's SHA-256 (hex)")
    p.add_argument("-o", "--output", required=True, metavar="RECORD.json", help="file to write")
    p = command(
        "verify-ots",
        cmd_verify_ots,
        "Verify a record's .ots proof against Bitcoin headers. Exit 0 verified, 1 only pending, 2 invalid,"
        " 4 when the header source fails or is needed and missing.",
        config=False,
    )
    p.add_argument("record", metavar="RECORD.json", help="the file the proof timestamps")
    p.add_argument("proof", metavar="RECORD.json.ots", help="the OpenTimestamps proof")
    header_source_arguments(p)
    max_anchor_delay_argument(p)
    p = command("anchor", cmd_anchor, "Anchoring: '--now' batches, submits and upgrades now; 'status' reports.")
    p.add_argument("action", nargs="?", choices=["status"], metavar="status", help="report pending leaves and batches")
    p.add_argument("--now", action="store_true", help="batch waiting leaves, submit and upgrade now")

    p = command("proof", cmd_proof, "Write the proof bundle (zip) of a message: copies, records, .ots, keys, attestation.")
    p.add_argument("message_id", metavar="MESSAGE-ID", help="the Message-ID, with or without angle brackets")
    p.add_argument("-o", "--output", metavar="BUNDLE.zip", help="file to write (default: proof-<Message-ID>.zip)")
    p.add_argument("--recipient", metavar="ADDRESS",
                   help="only this recipient's copy (every bundle disables the acknowledgment links of its copies)")
    p.add_argument("--submission", metavar="ID",
                   help="which message, when several carry this Message-ID (they are listed otherwise)")
    p = command(
        "verify",
        cmd_verify,
        "Verify a proof bundle offline, down to Bitcoin block headers. Exit 0 verified, 1 only pending, 2 invalid"
        " or not verifiable, 4 when the header source fails or is needed and missing.",
        config=False,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle's zip, or a directory it was unpacked into")
    header_source_arguments(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    max_anchor_delay_argument(p)
    p.add_argument("--max-tsa-delay", metavar="DURATION", type=duration, default="48h",
                   help="fail a record whose RFC 3161 token is longer than this after the time it claims"
                        " (e.g. 15m; default 48h)")
    p.add_argument("--max-ratio", type=int, default=MAX_RATIO, metavar="N",
                   help=f"refuse a zip entry over 1 MiB, or a bundle, that expands more than N times (zip bombs; default {MAX_RATIO})")
    command("admin-token", cmd_admin_token, "Generate an admin token; print it and the hash for admin.token_hashes.",
            config=False)

    p = command("dkim-keygen", cmd_dkim_keygen, "Generate a domain's RSA-2048 and Ed25519 DKIM keys (mode 0600); print the DNS records.")
    p.add_argument("--domain", required=True, help="signing domain (d=)")
    p.add_argument("--selector", required=True, help="selector of the RSA key; the Ed25519 key gets SELECTOR-ed")
    p.add_argument("--ed25519-selector", metavar="SELECTOR", help="another selector for the Ed25519 key")
    p.add_argument("--dir", metavar="PATH", help="where to write the keys (default: data_dir/dkim)")

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"estampille: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EstampilleError as exc:
        print(f"estampille: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`| head`): stop quietly, and keep the exit-time flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
