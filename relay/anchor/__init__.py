"""Anchoring in Bitcoin: Merkle batches, OpenTimestamps calendars and block headers."""
