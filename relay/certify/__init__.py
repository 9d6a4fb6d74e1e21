"""Certification, pure: each recipient's personal copy, its acknowledgment link and its DKIM signatures."""
