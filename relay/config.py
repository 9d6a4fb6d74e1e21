"""Configuration: one TOML file loaded into frozen, typed records.

Each key is declared once, here, as a dataclass field with its default and its
help (``metadata["help"]``). ``config/estampille.example.toml`` documents every
key; a test checks that the two agree. This module does no I/O beyond reading
the file it is given, and never reads the environment: the CLI passes the path.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.errors import ConfigError

PUBLIC_CALENDARS = (
    "https://a.pool.opentimestamps.org",
    "https://b.pool.opentimestamps.org",
    "https://a.pool.eternitywall.com",
)
PUBLIC_CALENDAR_DOMAINS = (
    "alice.btc.calendar.opentimestamps.org",
    "bob.btc.calendar.opentimestamps.org",
    "finney.calendar.eternitywall.com",
    "btc.calendar.catallaxy.com",
    "a.pool.opentimestamps.org",
    "b.pool.opentimestamps.org",
    "a.pool.eternitywall.com",
    "ots.btc.catallaxy.com",
)
# A domain name of dot-separated LDH labels (dsn.bounce_domain).
_DOMAIN = r"(?i)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"


def key(default: Any, help: str, **kw: Any) -> Any:
    """Declare one configuration key with its default and its documentation."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class SMTPConfig:
    listen_host: str = key("127.0.0.1", "Address the SMTP intake listens on.")
    listen_port: int = key(2525, "Port the SMTP intake listens on (25 or 587 in production).")
    hostname: str = key("localhost", "Name the relay gives in its SMTP greeting and in Received headers.")
    max_message_size: int = key(50 * 1024 * 1024, "Largest message accepted, in octets; larger ones get 552.")
    max_line_length: int = key(
        1_000_000,
        "Longest line accepted from a client, in octets. Lines over 998 are re-encoded before sending.",
    )
    tls_cert: str = key("", "PEM certificate for STARTTLS; empty disables STARTTLS.")
    tls_key: str = key("", "PEM private key matching tls_cert.")
    credentials_file: str = key(
        "", "File of 'user:hash' lines written by 'estampille passwd'; empty disables AUTH."
    )
    auth_plaintext_on_loopback: bool = key(
        False, "Allow AUTH without TLS when the client connects from a loopback address."
    )
    allowed_networks: list[str] = key(
        ["127.0.0.0/8", "::1/128"],
        "Networks allowed to relay without AUTH. Anyone else must authenticate, or is refused at RCPT with 5.7.1.",
    )
    min_free_disk_mb: int = key(100, "Below this much free space in the data directory, MAIL gets 452.")
    timeout: int = key(300, "Seconds of client inactivity before the connection is closed.")
    auth_failures_per_minute: int = key(5, "Failed AUTH attempts allowed per client address per minute.")
    max_recipients: int = key(
        1000, "Recipients one message may have; past it, RCPT gets 452 and the client sends the rest apart."
    )
    max_sessions_per_client: int = key(
        50, "SMTP sessions one client (an IPv4 address, an IPv6 /64) may hold open at once; past it, 421 at once."
    )


@dataclass(frozen=True)
class UpstreamConfig:
    kind: str = key(
        "maildir",
        "'smtp' hands mail to an outbound MTA; 'maildir' writes what would be sent into data_dir/outbox.",
        choices=("smtp", "maildir"),
    )
    host: str = key("127.0.0.1", "Outbound MTA host.")
    port: int = key(25, "Outbound MTA port.")
    tls: str = key(
        "starttls-if-offered",
        "'none', 'starttls' (required), 'starttls-if-offered' or 'implicit' (SMTPS).",
        choices=("none", "starttls", "starttls-if-offered", "implicit"),
    )
    verify_certificates: bool = key(True, "Verify the upstream's TLS certificate.")
    username: str = key("", "AUTH user at the upstream; empty for none.")
    password: str = key("", "AUTH password at the upstream.")
    helo_name: str = key("", "Name sent in EHLO; defaults to smtp.hostname.")
    concurrency: int = key(64, "Deliveries in progress at once (certifying, storing, sending, recording).")
    connections: int = key(16, "Upstream connections kept open and reused: the most sent at once.")
    concurrency_while_receiving: int = key(
        8,
        "Deliveries in progress at most while a client is sending mail to the relay: the client waiting"
        " for its 250 comes first. 0 keeps the full concurrency.",
    )
    timeout: float = key(60.0, "Seconds to wait for the upstream before deferring.")


@dataclass(frozen=True)
class DeliveryConfig:
    retry_first: float = key(300.0, "Seconds before the first retry of a deferred delivery.")
    retry_max: float = key(3600.0, "Longest wait between retries, in seconds (the wait doubles up to this).")
    give_up_after: float = key(5 * 86400.0, "Seconds after which a deferred delivery fails and the sender gets a DSN.")
    poll_interval: float = key(1.0, "Seconds between scans of the queue for due deliveries.")


@dataclass(frozen=True)
class DSNConfig:
    bounce_domain: str = key(
        "",
        "Domain whose MX points at the relay: each copy goes out with its own return path"
        " bounces+<id>@<bounce_domain> and asks the outbound MTA for delivery status notifications"
        " (RFC 3461), which come back here as evidence. Empty: off.",
    )


@dataclass(frozen=True)
class DKIMDomain:
    domain: str = key("", "Signing domain (d=).")
    rsa_selector: str = key("rsa", "Selector of the RSA-2048 key.")
    rsa_key: str = key("", "PEM file of the RSA private key.")
    ed25519_selector: str = key("ed", "Selector of the Ed25519 key.")
    ed25519_key: str = key("", "PEM file of the Ed25519 private key.")


@dataclass(frozen=True)
class DKIMConfig:
    default_domain: str = key(
        "", "Domain whose keys sign mail from a domain without keys of its own; empty: the first domain."
    )
    unknown_domain: str = key(
        "default",
        "For a sender domain without keys: 'default' signs with the default domain, 'refuse' answers 550 at MAIL.",
        choices=("default", "refuse"),
    )
    extra_headers: list[str] = key([], "Headers signed in addition to the standard list.")
    domains: list[DKIMDomain] = key([], "One [[dkim.domains]] table per signing domain.")


@dataclass(frozen=True)
class AckSender:
    match: str = key("", "Sender address or '@domain' this rule applies to; '*' for any.")
    insert: bool = key(True, "Insert an acknowledgment block at the top of the message.")
    rewrite_patterns: list[str] = key(
        [], "URL prefixes whose links become acknowledgment links leading on to the original URL."
    )


@dataclass(frozen=True)
class AckConfig:
    insert: bool = key(True, "Default: insert an acknowledgment block in every message.")
    rewrite_patterns: list[str] = key([], "Default URL prefixes to rewrite into acknowledgment links.")
    language: str = key("fr", "Language of the inserted block: 'fr' or 'en'.", choices=("fr", "en"))
    text_template: str = key("", "File holding the plain-text block; {url} is the link. Empty: built in.")
    html_template: str = key("", "File holding the HTML block; {url} is the link. Empty: built in.")
    senders: list[AckSender] = key([], "Per-sender rules, [[ack.senders]], first match wins.")


@dataclass(frozen=True)
class TrackerConfig:
    enabled: bool = key(True, "Run the acknowledgment and admin web server in the relay process.")
    listen_host: str = key("127.0.0.1", "Address the tracker listens on.")
    listen_port: int = key(8025, "Port the tracker listens on.")
    public_url: str = key(
        "http://127.0.0.1:8025",
        "Base URL members reach; acknowledgment links start with it. Unset: http:// the listen address and port.",
    )
    trusted_proxies: list[str] = key([], "Addresses whose X-Forwarded-For is trusted.")
    scanner_window: int = key(120, "Fetches within this many seconds of delivery are classified as likely scanner.")
    scanner_networks: list[str] = key([], "Networks whose fetches are classified as likely scanner.")
    token_ttl_days: int = key(
        60, "Days after delivery after which an acknowledgment link is refused (a page says it expired); 0: never."
    )
    timezone: str = key("Europe/Paris", "Time zone used to show times on pages.")
    language: str = key(
        "fr",
        "Language of the pages: 'fr' or 'en', the authority's, whatever the browser says (a mail scanner or an"
        " English-language browser would otherwise show a French authority's page in English); 'browser' follows"
        " the browser's Accept-Language, French by default.",
        choices=("fr", "en", "browser"),
    )
    miss_limit_per_minute: int = key(30, "Unknown-token requests allowed per client address per minute (then 429).")


@dataclass(frozen=True)
class AnchorConfig:
    enabled: bool = key(True, "Anchor evidence records through OpenTimestamps calendars.")
    calendars: list[str] = key(list(PUBLIC_CALENDARS), "Calendar URLs the batch roots are submitted to.")
    min_calendars: int = key(2, "Calendars that must answer for a batch to count as submitted.")
    interval: int = key(600, "Seconds between batches.")
    max_batch: int = key(
        128,
        "Leaves that trigger a batch before the interval ends, and the most one batch holds. Each doubling adds"
        " 35 bytes to every proof; with 128 a confirmed leaf's .ots is about 1,470 bytes (docs/anchoring.md).",
    )
    upgrade_interval: int = key(3600, "Seconds between upgrade rounds for pending batches.")
    timeout: float = key(10.0, "Seconds to wait for a calendar.")
    calendar_concurrency: int = key(
        4,
        "Requests in flight at once to one calendar host, across batches and workers; as many batches are"
        " submitted or upgraded at once. 4 is polite to the public calendars.",
    )
    allowlist: list[str] = key(
        list(PUBLIC_CALENDAR_DOMAINS),
        "Calendar host names the upgrade worker may contact, over https only (configured calendars are always"
        " allowed, over https too).",
    )
    stale_after: int = key(48 * 3600, "Seconds after which a pending batch is logged and counted as stale.")
    resubmit_after: int = key(7 * 86400, "Seconds after which a pending batch's root is resubmitted.")
    retry_first: float = key(60.0, "Seconds before a batch that too few calendars accepted is submitted again.")
    retry_max: float = key(3600.0, "Longest wait between submission retries, in seconds (the wait doubles up to this).")
    esplora: list[str] = key(
        [],
        "Esplora explorer API URLs the relay checks calendars' Bitcoin attestations against (block hash, proof of"
        " work, Merkle root): two different explorers at least, which must agree. With neither these nor bitcoind,"
        " batches stay 'attested' (not verified) and nothing is pruned (docs/anchoring.md).",
    )
    bitcoind: str = key(
        "", "bitcoind JSON-RPC URL (http://user:pass@host:8332) to check attestations against, as anchor.esplora does."
    )
    regtest: bool = key(False, "Accept regtest proof of work in those block headers (tests only).")
    http_for_tests: bool = key(False, "Let the upgrade worker ask calendars over plain http (tests only).")


@dataclass(frozen=True)
class TSAAuthority:
    name: str = key("", "Name the bundles and the attestation give this time-stamping authority.")
    url: str = key("", "RFC 3161 URL the batch roots are posted to (application/timestamp-query).")
    username: str = key("", "HTTP basic user, for a TSA that needs an account; empty: none.")
    password: str = key("", "HTTP basic password.")
    client_cert: str = key("", "PEM client certificate for a TSA that authenticates by certificate; empty: none.")
    client_key: str = key("", "PEM key of client_cert.")
    ca_files: list[str] = key(
        [], "PEM files of the CA certificates its chain must lead to (roots, then any intermediates)."
    )
    qualified: bool = key(
        False, "Whether the operator declares this TSA qualified under eIDAS (shown as declared, never as proven)."
    )
    trust_list: str = key("", "The trust list the operator found it on, e.g. 'EU Trusted List, FR'.")
    policy: str = key("", "Policy OID its tokens must carry (the TSA applies its account's policy); empty: any.")


@dataclass(frozen=True)
class TSAConfig:
    authorities: list[TSAAuthority] = key(
        [],
        "RFC 3161 time-stamping authorities, [[tsa.authorities]], tried in order for each batch root: one token"
        " per batch, from the first that answers with a valid one. Empty (the default): no tokens (docs/timestamps.md).",
    )
    timeout: float = key(10.0, "Seconds to wait for a TSA.")
    max_skew: float = key(60.0, "Largest difference in seconds between a token's time and ours for it to be kept.")
    retry_first: float = key(30.0, "Seconds before a batch whose token failed asks again.")
    retry_max: float = key(3600.0, "Longest wait between token retries, in seconds (the wait doubles up to this).")


def header_sources_problem(anchor: AnchorConfig) -> str | None:
    """Why ``anchor.esplora`` and ``anchor.bitcoind`` cannot check an attestation, or None.

    One explorer alone is trusted blindly, and one given twice is one explorer: bitcoind, or two different
    explorers that agree, or none (batches then stay 'attested').
    """
    seen = [url.rstrip("/").lower() for url in anchor.esplora]
    if len(set(seen)) != len(seen):
        return "anchor.esplora: the same explorer is given twice; give two different explorers"
    if len(seen) == 1 and not anchor.bitcoind:
        return "anchor.esplora: one explorer alone is not enough; give a second one, or anchor.bitcoind"
    return None


@dataclass(frozen=True)
class PrivacyConfig:
    retention_days: int = key(365, "Days raw IP addresses and user agents are kept before the purge.")


@dataclass(frozen=True)
class RetentionConfig:
    messages_days: int = key(0, "Days message bodies are kept; 0 keeps them (they are the proof).")
    purge_interval: int = key(86400, "Seconds between runs of the periodic purge.")


@dataclass(frozen=True)
class AdminConfig:
    token_hashes: list[str] = key(
        [], "SHA-256 hex digests of admin API tokens (see 'estampille admin-token')."
    )
    metrics_listen_host: str = key("127.0.0.1", "Address of the Prometheus /metrics endpoint.")
    metrics_listen_port: int = key(0, "Port of /metrics; 0 disables it.")


@dataclass(frozen=True)
class WebhooksConfig:
    urls: list[str] = key([], "URLs that receive events as JSON POSTs.")
    secret: str = key("", "Secret for the X-Estampille-Signature HMAC-SHA256 header.")
    retry_for: int = key(86400, "Seconds an event is retried before it is given up.")


@dataclass(frozen=True)
class LogConfig:
    level: str = key("INFO", "DEBUG, INFO, WARNING or ERROR.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = key("text", "'text' or 'json' (one JSON object per line).", choices=("text", "json"))


ASSEMBLIES = ("commune_under_3500", "commune", "epci", "syndicat", "departement", "region")


@dataclass(frozen=True)
class LawSender:
    match: str = key("", "Sender address or '@domain' this rule applies to; '*' for any.")
    assembly: str = key(
        "",
        "Assembly that sender convokes (sets the jours francs owed); empty: law.assembly.",
        choices=("", *ASSEMBLIES),
    )
    meeting_date_pattern: str = key(
        "",
        "Regular expression finding the meeting date in the Subject, then the text, for a tool whose wording"
        " the built-in French reader misses: named groups day, month (number or French name), year, and"
        " optionally hour and minute. Empty: the built-in reader.",
    )


@dataclass(frozen=True)
class LawConfig:
    assembly: str = key(
        "",
        "Assembly of senders without a [[law.senders]] rule: commune_under_3500 (3 jours francs), commune,"
        " epci or syndicat (5), departement or region (12). Empty: their deadlines are not checked.",
        choices=("", *ASSEMBLIES),
    )
    refuse_late: bool = key(
        False,
        "Refuse a convocation that arrives after its deadline at DATA with 550 5.7.0, naming the deadline;"
        " false accepts it, logs a WARNING and flags it everywhere.",
    )
    senders: list[LawSender] = key([], "Per-sender rules, [[law.senders]], first match wins.")


@dataclass(frozen=True)
class RemindersConfig:
    enabled: bool = key(
        False,
        "Send reminders, as certified messages of their own carrying the member's same acknowledgment link,"
        " to members who have not acknowledged a convocation whose meeting date is known.",
    )
    after_hours: list[int] = key(
        [48], "Hours after the convocation was received when each reminder is due; one reminder per entry."
    )
    stop_before_hours: int = key(24, "No reminder later than this many hours before the meeting (never after it).")
    interval: int = key(600, "Seconds between two looks for due reminders.")


@dataclass(frozen=True)
class Config:
    data_dir: str = key("estampille-data", "Directory of the database, message files and generated keys.")
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dsn: DSNConfig = field(default_factory=DSNConfig)
    dkim: DKIMConfig = field(default_factory=DKIMConfig)
    ack: AckConfig = field(default_factory=AckConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    tsa: TSAConfig = field(default_factory=TSAConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    law: LawConfig = field(default_factory=LawConfig)
    reminders: RemindersConfig = field(default_factory=RemindersConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @classmethod
    def from_toml(cls, text: str, *, base_dir: Path | None = None) -> Config:
        """Parse TOML text; relative paths are resolved against ``base_dir``."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration is not valid TOML: {exc}") from exc
        config = _build(cls, raw, "")
        if "public_url" not in raw.get("tracker", {}):
            # Follows tracker.listen_port: a default fixed on 8025 would break every link once the port moves.
            tracker = config.tracker
            host = f"[{tracker.listen_host}]" if ":" in tracker.listen_host else tracker.listen_host
            config = dataclasses.replace(
                config, tracker=dataclasses.replace(tracker, public_url=f"http://{host}:{tracker.listen_port}"))
        if base_dir is not None:
            config = config.resolve_paths(base_dir)
        _check(config)
        return config

    @classmethod
    def from_file(cls, path: Path) -> Config:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
        return cls.from_toml(text, base_dir=path.parent)

    def resolve_paths(self, base_dir: Path) -> Config:
        """Make data_dir and file keys absolute, relative to the configuration file."""

        def absolute(p: str) -> str:
            return str((base_dir / p).resolve()) if p and not Path(p).is_absolute() else p

        smtp = dataclasses.replace(
            self.smtp,
            tls_cert=absolute(self.smtp.tls_cert),
            tls_key=absolute(self.smtp.tls_key),
            credentials_file=absolute(self.smtp.credentials_file),
        )
        domains = [
            dataclasses.replace(d, rsa_key=absolute(d.rsa_key), ed25519_key=absolute(d.ed25519_key))
            for d in self.dkim.domains
        ]
        ack = dataclasses.replace(
            self.ack, text_template=absolute(self.ack.text_template), html_template=absolute(self.ack.html_template)
        )
        authorities = [
            dataclasses.replace(
                a,
                client_cert=absolute(a.client_cert),
                client_key=absolute(a.client_key),
                ca_files=[absolute(f) for f in a.ca_files],
            )
            for a in self.tsa.authorities
        ]
        return dataclasses.replace(
            self,
            data_dir=absolute(self.data_dir),
            smtp=smtp,
            dkim=dataclasses.replace(self.dkim, domains=domains),
            ack=ack,
            tsa=dataclasses.replace(self.tsa, authorities=authorities),
        )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def documented_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str]]:
    """Every key as (dotted name, help), for documentation checks and `check-config`."""
    out: list[tuple[str, str]] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        sub = _dataclass_of(hints[f.name])
        if sub is not None:
            out.extend(documented_keys(sub, name + "."))
            continue
        out.append((name, f.metadata.get("help", "")))
        item = _list_item(hints[f.name])
        if item is not None and dataclasses.is_dataclass(item):
            out.extend(documented_keys(item, name + "."))
    return out


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_of(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list


def _list_item(tp: Any) -> Any:
    return typing.get_args(tp)[0] if _is_list(tp) else None


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'configuration'}: expected a table, got {raw!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        dotted = f"{where}{name}"
        if name not in fields:
            raise ConfigError(f"{dotted}: unknown key (see config/estampille.example.toml)")
        values[name] = _coerce(hints[name], value, dotted, fields[name].metadata)
    return cls(**values)


def _coerce(tp: Any, value: Any, dotted: str, meta: Any) -> Any:
    sub = _dataclass_of(tp)
    if sub is not None:
        return _build(sub, value, dotted + ".")
    if _is_list(tp):
        if not isinstance(value, list):
            raise ConfigError(f"{dotted} = {value!r}: expected a list")
        item = _list_item(tp)
        return [_coerce(item, v, f"{dotted}[{i}]", {}) for i, v in enumerate(value)]
    if isinstance(tp, types.UnionType):
        tp = next(t for t in typing.get_args(tp) if t is not type(None))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        raise ConfigError(f"{dotted} = {value!r}: expected {_describe(tp)}")
    choices = meta.get("choices") if meta else None
    if choices and value not in choices:
        raise ConfigError(f"{dotted} = {value!r}: expected one of {', '.join(map(repr, choices))}")
    return float(value) if tp is float else value


def _describe(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _check(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    for dotted, nets in (
        ("smtp.allowed_networks", config.smtp.allowed_networks),
        ("tracker.scanner_networks", config.tracker.scanner_networks),
        ("tracker.trusted_proxies", config.tracker.trusted_proxies),
    ):
        for net in nets:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{dotted} = {net!r}: expected a network such as '192.0.2.0/24'") from None
    for dotted, port in (
        ("smtp.listen_port", config.smtp.listen_port),
        ("tracker.listen_port", config.tracker.listen_port),
        ("upstream.port", config.upstream.port),
        ("admin.metrics_listen_port", config.admin.metrics_listen_port),
    ):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{dotted} = {port!r}: expected a port from 0 to 65535")
    if bool(config.smtp.tls_cert) != bool(config.smtp.tls_key):
        raise ConfigError("smtp.tls_cert and smtp.tls_key: expected both or neither")
    if config.smtp.max_recipients < 1:
        raise ConfigError(f"smtp.max_recipients = {config.smtp.max_recipients}: expected at least 1")
    for pos, tsa in enumerate(config.tsa.authorities):
        where = f"tsa.authorities[{pos}]"
        if not tsa.name or not tsa.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: expected a name and an http(s) url")
        if not tsa.ca_files:
            raise ConfigError(f"{where}.ca_files: expected the CA certificates its chain leads to")
        if bool(tsa.client_cert) != bool(tsa.client_key):
            raise ConfigError(f"{where}.client_cert and client_key: expected both or neither")
        if tsa.policy and not re.fullmatch(r"[0-2](\.[0-9]+)+", tsa.policy):
            raise ConfigError(f"{where}.policy = {tsa.policy!r}: expected an OID such as '1.2.3.4'")
    if config.anchor.calendar_concurrency < 1:
        raise ConfigError(f"anchor.calendar_concurrency = {config.anchor.calendar_concurrency}: expected at least 1")
    if config.anchor.min_calendars > len(config.anchor.calendars):
        raise ConfigError(
            f"anchor.min_calendars = {config.anchor.min_calendars}: expected at most "
            f"{len(config.anchor.calendars)}, the number of anchor.calendars"
        )
    if config.dsn.bounce_domain and not re.fullmatch(_DOMAIN, config.dsn.bounce_domain):
        raise ConfigError(f"dsn.bounce_domain = {config.dsn.bounce_domain!r}: expected a domain name")
    for pos, d in enumerate(config.dkim.domains):
        if not d.domain:
            raise ConfigError(f"dkim.domains[{pos}].domain = '': expected a domain name")
    if not config.tracker.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"tracker.public_url = {config.tracker.public_url!r}: expected an http(s) URL")
    for pos, digest in enumerate(config.admin.token_hashes):
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            # A token pasted instead of its hash would never match: say so rather than refuse every login.
            raise ConfigError(
                f"admin.token_hashes[{pos}]: expected the 64 hex digits of a SHA-256 ('estampille admin-token'"
                " prints it), not the token itself"
            )
    for pos, url in enumerate(config.anchor.esplora):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"anchor.esplora[{pos}] = {url!r}: expected an http(s) URL")
    if config.anchor.bitcoind and not config.anchor.bitcoind.startswith(("http://", "https://")):
        raise ConfigError("anchor.bitcoind: expected an http(s) URL")  # the URL may carry a password: not echoed
    problem = header_sources_problem(config.anchor)
    if problem:
        raise ConfigError(problem)
    for pos, url in enumerate(config.webhooks.urls):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhooks.urls[{pos}] = {url!r}: expected an http(s) URL")
    for pos, rule in enumerate(config.law.senders):
        _check_date_pattern(f"law.senders[{pos}].meeting_date_pattern", rule.meeting_date_pattern)
    hours = config.reminders.after_hours
    if any(h <= 0 for h in hours) or hours != sorted(set(hours)):
        raise ConfigError(f"reminders.after_hours = {hours!r}: expected increasing positive hours, such as [48, 96]")
    if config.reminders.stop_before_hours < 0 or config.reminders.interval < 1:
        raise ConfigError("reminders.stop_before_hours and reminders.interval: expected 0 or more, and 1 or more")
    if config.webhooks.urls and not config.webhooks.secret:
        raise ConfigError("webhooks.secret = '': expected a secret to sign the events sent to webhooks.urls")


def _check_date_pattern(dotted: str, pattern: str) -> None:
    if not pattern:
        return
    try:
        groups = set(re.compile(pattern).groupindex)
    except re.error as exc:
        raise ConfigError(f"{dotted} = {pattern!r}: not a regular expression ({exc})") from None
    if not {"day", "month", "year"} <= groups:
        raise ConfigError(f"{dotted} = {pattern!r}: expected the named groups day, month and year")
