"""Anchoring in Bitcoin: Merkle batches, OpenTimestamps calendars, block headers and proof verification."""
