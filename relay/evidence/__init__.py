"""Evidence: the records, the proof bundle made from them, and their offline verification (down to Bitcoin headers)."""
