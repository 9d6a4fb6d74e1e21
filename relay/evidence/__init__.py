"""Evidence: the records, the proof bundle made from them, and its offline verification."""
