"""Clients of intentd: subscribe to events, send audio. Never imports torch."""
