"""Operations around the relay: backups, retention, metrics, webhooks, the data directory lock, systemd."""
