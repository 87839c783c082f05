"""Events: the in-memory queue, the store (SQLite or PostgreSQL), and delivery to Statsig."""

from flagware.events.model import Event
from flagware.events.store import EventStore, Store, open_store

__all__ = ["Event", "EventStore", "Store", "open_store"]
