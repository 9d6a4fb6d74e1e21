"""The law of convocations (CGCT): deadlines in jours francs, the meeting date, the register's wording.

Pure: nothing here reads the clock, the environment, the network or the store. Callers pass the
time a convocation was sent and what they know of the meeting; the modules answer with values:

- ``deadline``: the jours francs an assembly owes its members and the latest lawful sending date;
- ``dates``: French date expressions in a convocation's subject and text ("séance du mardi
  15 décembre 2026 à 18h30"), and which one is the meeting's (or "unknown", never a guess);
- ``meeting``: the meeting date of one message, from its ``X-Meeting-Date`` header, a per-sender
  rule of the configuration, or its subject and text, in that order;
- ``verdict``: what is said of a late convocation (the 550 reply, the log line, the webhook event);
- ``register``: on time per member, and the paragraph for the register of deliberations;
- ``evidence``: the record of an admin setting a meeting date;
- ``reminders``: when a reminder is due, and the reminder message.

Their edges: ``relay.smtp.convocation`` (intake), ``relay.store.law`` (rows),
``relay.outbound.reminders`` (the reminder worker), ``tracker.law`` (API and admin pages).
"""
