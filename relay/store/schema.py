"""The schema: its migrations, and the function that applies them when the store opens."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from relay.errors import StoreError

log = logging.getLogger("estampille.store")

# Each entry moves the schema one version forward; never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    # 1: submissions, deliveries, attempts, evidence, anchoring, tracker, webhooks.
    """
    CREATE TABLE submissions (
        id             TEXT PRIMARY KEY,
        kind           TEXT NOT NULL DEFAULT 'mail' CHECK (kind IN ('mail', 'dsn')),
        received_at    REAL NOT NULL,
        mail_from      TEXT NOT NULL,
        mail_options   TEXT NOT NULL DEFAULT '[]',
        client_address TEXT NOT NULL,
        auth_user      TEXT,
        tls            TEXT,
        message_id     TEXT,
        subject        TEXT,
        size           INTEGER NOT NULL,
        data_sha256    TEXT NOT NULL,
        record_digest  TEXT REFERENCES records(digest)
    );
    CREATE INDEX submissions_message_id ON submissions(message_id);
    CREATE INDEX submissions_received_at ON submissions(received_at);

    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY,
        submission_id   TEXT NOT NULL REFERENCES submissions(id),
        recipient       TEXT NOT NULL,
        rcpt_options    TEXT NOT NULL DEFAULT '[]',
        state           TEXT NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'sending', 'deferred', 'delivered', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_code       INTEGER,
        last_reply      TEXT,
        copy_sha256     TEXT,
        record_digest   TEXT REFERENCES records(digest),
        handoff_digest  TEXT REFERENCES records(digest),
        updated_at      REAL NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
    CREATE INDEX deliveries_submission ON deliveries(submission_id);

    CREATE TABLE attempts (
        id            INTEGER PRIMARY KEY,
        delivery_id   INTEGER NOT NULL REFERENCES deliveries(id),
        started_at    REAL NOT NULL,
        finished_at   REAL NOT NULL,
        outcome       TEXT NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'failed')),
        code          INTEGER,
        reply         TEXT NOT NULL,
        queue_id      TEXT,
        upstream_host TEXT,
        tls           TEXT
    );
    CREATE INDEX attempts_delivery ON attempts(delivery_id);

    CREATE TABLE records (
        digest        TEXT PRIMARY KEY,
        type          TEXT NOT NULL,
        body          BLOB NOT NULL,
        submission_id TEXT,
        delivery_id   INTEGER,
        created_at    REAL NOT NULL
    );
    CREATE INDEX records_submission ON records(submission_id);
    CREATE INDEX records_delivery ON records(delivery_id);

    -- Acknowledgment tokens are stored hashed; target_url is set for rewritten links.
    CREATE TABLE ack_tokens (
        token_sha256 TEXT PRIMARY KEY,
        delivery_id  INTEGER NOT NULL REFERENCES deliveries(id),
        target_url   TEXT,
        created_at   REAL NOT NULL
    );
    CREATE INDEX ack_tokens_delivery ON ack_tokens(delivery_id);

    -- Raw personal data, deleted at the end of its retention; records keep only commitments.
    CREATE TABLE personal (
        id         INTEGER PRIMARY KEY,
        salt       BLOB NOT NULL,
        ip         TEXT,
        user_agent TEXT,
        created_at REAL NOT NULL
    );

    CREATE TABLE fetches (
        id             INTEGER PRIMARY KEY,
        delivery_id    INTEGER NOT NULL REFERENCES deliveries(id),
        at             REAL NOT NULL,
        method         TEXT NOT NULL,
        classification TEXT NOT NULL CHECK (classification IN ('scanner', 'person')),
        reason         TEXT NOT NULL,
        personal_id    INTEGER REFERENCES personal(id) ON DELETE SET NULL,
        record_digest  TEXT REFERENCES records(digest)
    );
    CREATE INDEX fetches_delivery ON fetches(delivery_id);

    CREATE TABLE receipts (
        delivery_id   INTEGER PRIMARY KEY REFERENCES deliveries(id),
        at            REAL NOT NULL,
        personal_id   INTEGER REFERENCES personal(id) ON DELETE SET NULL,
        record_digest TEXT NOT NULL REFERENCES records(digest)
    );

    CREATE TABLE anchor_batches (
        id              INTEGER PRIMARY KEY,
        root            BLOB NOT NULL,
        created_at      REAL NOT NULL,
        leaves          INTEGER NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('submitting', 'pending', 'confirmed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        timestamp       BLOB,
        bitcoin_height  INTEGER,
        block_time      INTEGER,
        confirmed_at    REAL,
        resubmitted_at  REAL
    );
    CREATE INDEX anchor_batches_state ON anchor_batches(state, next_attempt_at);

    CREATE TABLE anchor_leaves (
        digest    TEXT PRIMARY KEY REFERENCES records(digest),
        queued_at REAL NOT NULL,
        batch_id  INTEGER REFERENCES anchor_batches(id),
        nonce     BLOB,
        path      BLOB
    );
    CREATE INDEX anchor_leaves_unbatched ON anchor_leaves(queued_at) WHERE batch_id IS NULL;
    CREATE INDEX anchor_leaves_batch ON anchor_leaves(batch_id);

    CREATE TABLE webhook_events (
        id              INTEGER PRIMARY KEY,
        url             TEXT NOT NULL,
        event           TEXT NOT NULL,
        payload         BLOB NOT NULL,
        created_at      REAL NOT NULL,
        state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error      TEXT
    );
    CREATE INDEX webhook_events_due ON webhook_events(state, next_attempt_at);
    """,
    # 2: the privacy purge finds old personal rows, and the fetches and receipts naming them, by index.
    """
    CREATE INDEX personal_created_at ON personal(created_at);
    CREATE INDEX fetches_personal ON fetches(personal_id);
    CREATE INDEX receipts_personal ON receipts(personal_id);
    """,
    # 3: message files deleted at the end of retention.messages_days; records keep their digests.
    """
    CREATE TABLE purged_messages (
        sha256    TEXT PRIMARY KEY,
        purged_at REAL NOT NULL
    );
    """,
    # 4: anchoring keeps each batch's Merkle tree in chunks and each leaf's position in it
    # (a leaf's path is read from the tree: 64 bytes a leaf instead of 32 per level), and
    # the calendars' replies. anchor_leaves.path stays unused.
    """
    ALTER TABLE anchor_leaves ADD COLUMN position INTEGER;
    CREATE TABLE anchor_nodes (
        batch_id INTEGER NOT NULL REFERENCES anchor_batches(id),
        level    INTEGER NOT NULL,
        chunk    INTEGER NOT NULL,
        hashes   BLOB NOT NULL,
        PRIMARY KEY (batch_id, level, chunk)
    );
    CREATE TABLE anchor_replies (
        batch_id INTEGER NOT NULL REFERENCES anchor_batches(id),
        calendar TEXT NOT NULL,
        at       REAL NOT NULL,
        reply    BLOB NOT NULL,
        PRIMARY KEY (batch_id, calendar)
    );
    """,
    # 5: certified copies up to INLINE_MAX octets live here (received messages too, since), written
    # in the transaction of their delivery record, rather than as files: the group commit's one
    # WAL fsync then covers them, where a file cost two fsyncs of its own before each sending.
    """
    CREATE TABLE message_bytes (
        sha256 TEXT PRIMARY KEY,
        data   BLOB NOT NULL
    );
    """,
    # 6: records are looked up by delivery only for hand-offs (message_digests, message_evidence),
    # and never by submission; yet every record, each page fetch's included, went into both indexes.
    """
    DROP INDEX records_submission;
    DROP INDEX records_delivery;
    CREATE INDEX records_handoff ON records(delivery_id) WHERE type = 'handoff';
    """,
    # 7: every page fetch looks its token up by hash; keyed by the hash alone (WITHOUT ROWID),
    # that is one B-tree search instead of the key's index then the table (8.1 to 6.8 us a
    # token, measured on the tracker bench's lookup with fetches committed in between).
    """
    CREATE TABLE ack_tokens_by_hash (
        token_sha256 TEXT PRIMARY KEY,
        delivery_id  INTEGER NOT NULL REFERENCES deliveries(id),
        target_url   TEXT,
        created_at   REAL NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO ack_tokens_by_hash SELECT token_sha256, delivery_id, target_url, created_at FROM ack_tokens;
    DROP TABLE ack_tokens;
    ALTER TABLE ack_tokens_by_hash RENAME TO ack_tokens;
    CREATE INDEX ack_tokens_delivery ON ack_tokens(delivery_id);
    """,
    # 8: every record, each page fetch's included, was queued for anchoring in a table keyed by
    # its random digest: about one more page written a fetch (16 of the 39 us of CPU a fetch
    # took in the database thread). Leaves are keyed by their record's id instead, which grows
    # in order; records get that id as an explicit key so that VACUUM cannot renumber it.
    """
    CREATE TABLE records_by_id (
        id            INTEGER PRIMARY KEY,
        digest        TEXT NOT NULL UNIQUE,
        type          TEXT NOT NULL,
        body          BLOB NOT NULL,
        submission_id TEXT,
        delivery_id   INTEGER,
        created_at    REAL NOT NULL
    );
    INSERT INTO records_by_id SELECT rowid, digest, type, body, submission_id, delivery_id, created_at FROM records;
    CREATE TABLE anchor_leaves_by_record (
        record_id INTEGER PRIMARY KEY REFERENCES records(id),
        digest    TEXT NOT NULL,  -- the record's: a batch is formed from this table alone
        queued_at REAL NOT NULL,
        batch_id  INTEGER REFERENCES anchor_batches(id),
        nonce     BLOB,
        position  INTEGER
    );
    INSERT INTO anchor_leaves_by_record
        SELECT r.rowid, l.digest, l.queued_at, l.batch_id, l.nonce, l.position
        FROM anchor_leaves l JOIN records r ON r.digest = l.digest;
    -- Every row dropped lives on in the copies: no need to overwrite the freed pages, which
    -- kept their old content in memory until the end of the statement (600 MB for 10^6 records).
    PRAGMA secure_delete=OFF;
    DROP TABLE anchor_leaves;
    DROP TABLE records;
    PRAGMA secure_delete=ON;
    ALTER TABLE records_by_id RENAME TO records;
    ALTER TABLE anchor_leaves_by_record RENAME TO anchor_leaves;
    CREATE INDEX records_handoff ON records(delivery_id) WHERE type = 'handoff';
    CREATE INDEX anchor_leaves_unbatched ON anchor_leaves(queued_at) WHERE batch_id IS NULL;
    CREATE INDEX anchor_leaves_batch ON anchor_leaves(batch_id);
    """,
    # 9 (poison messages, relay/store/held.py): crashes of the relay in a row with a delivery in flight.
    """
    CREATE TABLE delivery_crashes (
        delivery_id     INTEGER PRIMARY KEY REFERENCES deliveries(id),
        crashes         INTEGER NOT NULL,
        started         INTEGER NOT NULL DEFAULT 0  -- taken up by a worker since the last start
    );
    """,
    # 10 (anchoring): a batch whose Bitcoin attestations no block header has checked yet is 'attested',
    # not 'confirmed'. SQLite cannot change a CHECK constraint: the table is rebuilt, ids kept.
    """
    CREATE TABLE anchor_batches_checked (
        id              INTEGER PRIMARY KEY,
        root            BLOB NOT NULL,
        created_at      REAL NOT NULL,
        leaves          INTEGER NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('submitting', 'pending', 'attested', 'confirmed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        timestamp       BLOB,
        bitcoin_height  INTEGER,
        block_time      INTEGER,
        confirmed_at    REAL,
        resubmitted_at  REAL
    );
    -- A batch confirmed before then had at most its lowest attestations checked, and its stored
    -- timestamp holds every calendar's: it goes back to 'attested' and the next upgrade round
    -- checks each of them (a header source configured) before it is confirmed again.
    INSERT INTO anchor_batches_checked
        SELECT id, root, created_at, leaves, CASE WHEN state = 'confirmed' THEN 'attested' ELSE state END,
               attempts, next_attempt_at, timestamp, bitcoin_height, block_time, confirmed_at, resubmitted_at
        FROM anchor_batches;
    DROP TABLE anchor_batches;
    ALTER TABLE anchor_batches_checked RENAME TO anchor_batches;
    CREATE INDEX anchor_batches_state ON anchor_batches(state, next_attempt_at);
    """,
    # 11: delivery status reports (relay.store.reports): each copy's return token, drawn before
    # it is sent, and the reports received for it (their bytes in message_bytes).
    """
    CREATE TABLE return_tokens (
        token       TEXT PRIMARY KEY,
        delivery_id INTEGER NOT NULL UNIQUE REFERENCES deliveries(id),
        created_at  REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE delivery_reports (
        id            INTEGER PRIMARY KEY,
        delivery_id   INTEGER NOT NULL REFERENCES deliveries(id),
        received_at   REAL NOT NULL,
        action        TEXT NOT NULL,
        status        TEXT NOT NULL,
        remote_mta    TEXT,
        diagnostic    TEXT,
        report_sha256 TEXT NOT NULL,
        record_digest TEXT NOT NULL REFERENCES records(digest)
    );
    CREATE INDEX delivery_reports_delivery ON delivery_reports(delivery_id);
    """,
    # 12: a proof bundle's copies carry live acknowledgment links: building one marks their tokens
    # disclosed (by the digest of its disclosure record), and the tracker refuses them from then
    # on, as it refuses expired ones; each refusal is kept (relay/store/tokens.py).
    """
    ALTER TABLE ack_tokens ADD COLUMN disclosed_by TEXT;
    CREATE TABLE token_refusals (
        id          INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        at          REAL NOT NULL,
        method      TEXT NOT NULL,
        reason      TEXT NOT NULL  -- 'disclosed' or 'expired'
    );
    CREATE INDEX token_refusals_delivery ON token_refusals(delivery_id);
    -- A message's disclosures are read with it; records are otherwise not indexed by submission.
    CREATE INDEX records_disclosure ON records(submission_id) WHERE type = 'disclosure';
    """,
    # 13: law (relay/law, relay/store/law.py): each convocation's meeting date, read at intake or set by
    # an admin, and its sender's assembly and urgency then. Deadlines are computed from them, never stored.
    """
    CREATE TABLE convocations (
        submission_id  TEXT PRIMARY KEY REFERENCES submissions(id),
        meeting_date   TEXT,  -- ISO date in Paris; NULL: unknown
        meeting_time   TEXT,  -- HH:MM in Paris; NULL: unknown
        meeting_source TEXT,  -- header, rule, subject, text or admin
        assembly       TEXT,  -- NULL: no assembly configured for the sender
        urgent         INTEGER NOT NULL DEFAULT 0,
        installation   INTEGER NOT NULL DEFAULT 0,  -- the first meeting after a general election (L2121-7)
        updated_at     REAL NOT NULL
    );
    CREATE INDEX convocations_meeting_date ON convocations(meeting_date) WHERE meeting_date IS NOT NULL;
    -- A reminder is a message of the relay's own (a submission of kind 'dsn', the kind the relay
    -- generates, delivered without a new link) to the member of one convocation delivery.
    CREATE TABLE reminders (
        id            INTEGER PRIMARY KEY,
        delivery_id   INTEGER NOT NULL REFERENCES deliveries(id),  -- the member's copy of the convocation
        submission_id TEXT NOT NULL REFERENCES submissions(id),  -- the reminder
        number        INTEGER NOT NULL,  -- 1, 2...: the Nth reminder to that member
        sent_at       REAL NOT NULL,
        UNIQUE (delivery_id, number)
    );
    CREATE INDEX reminders_submission ON reminders(submission_id);
    """,
    # 14: RFC 3161 tokens (relay/anchor/tsa.py, relay/store/tsa.py): one per batch root, asked when the
    # batch is formed and again with backoff until a TSA gives a valid one.
    """
    CREATE TABLE tsa_tokens (
        batch_id        INTEGER PRIMARY KEY REFERENCES anchor_batches(id),
        state           TEXT NOT NULL,     -- 'waiting' (asked again at next_attempt_at) or 'stamped'
        preimage        BLOB NOT NULL,     -- the bytes whose SHA-256 is the batch root, as the TSA is asked
        attempts        INTEGER NOT NULL,
        next_attempt_at REAL,
        last_error      TEXT,
        authority       TEXT,              -- the configured name of the TSA that stamped it
        qualified       INTEGER,           -- as the operator declared that TSA
        trust_list      TEXT,
        tsr             BLOB,              -- the TimeStampResp, DER, as received and checked
        chain_pem       BLOB,              -- its signing certificate, then the CAs it was checked against
        token_time      REAL,              -- the token's genTime, Unix
        policy          TEXT
    );
    CREATE INDEX tsa_tokens_waiting ON tsa_tokens(next_attempt_at) WHERE state = 'waiting';
    """,
)


SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, data_dir: Path) -> None:
    """Bring the database of ``data_dir`` to SCHEMA_VERSION, one committed step at a time."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this Estampille ({SCHEMA_VERSION}); upgrade it"
        )
    if version == SCHEMA_VERSION:
        return
    # SQLite's way to rebuild a table others refer to: foreign keys off (it is a no-op inside
    # a transaction), then checked before each migration commits.
    conn.execute("PRAGMA foreign_keys=OFF")
    for number in range(version, SCHEMA_VERSION):
        if version:  # not a new database
            log.info("migrating the database in %s from schema version %d to %d", data_dir, number, number + 1)
        started = time.monotonic()
        # executescript commits first, so the transaction begins in the script and stays open.
        conn.executescript("BEGIN IMMEDIATE;\n" + MIGRATIONS[number] + f"\nPRAGMA user_version={number + 1};")
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            conn.execute("ROLLBACK")
            table, rowid, parent, _ = broken[0]
            raise StoreError(
                f"migration to schema version {number + 1} left {len(broken)} broken references"
                f" (the first: {table} row {rowid} names a missing {parent} row), so it was rolled back and"
                f" the database stays at version {number}: restore a backup, or report this with the database"
            )
        conn.execute("COMMIT")
        if version:
            log.info("migrated to schema version %d in %.1f s", number + 1, time.monotonic() - started)
    conn.execute("PRAGMA foreign_keys=ON")
