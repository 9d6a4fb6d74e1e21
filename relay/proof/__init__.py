"""Proofs: a message's evidence gathered from the store and the anchors, bundled and verified."""
