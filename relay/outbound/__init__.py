"""Delivery: certified copies handed to the outbound MTA, retries, the queue and delivery status notifications."""
