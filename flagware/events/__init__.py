"""Events: the in-memory queue, the SQLite store, and delivery to Statsig."""

from flagware.events.model import Event
from flagware.events.store import EventStore

__all__ = ["Event", "EventStore"]
