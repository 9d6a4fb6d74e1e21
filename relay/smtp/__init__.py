"""Intake: the SMTP server the sending application talks to, its AUTH, and the durable spool."""
