"""Whether an exception says something is away (a database, the network), and
that exception on one line: what failure logs and the command line both need.
"""

from __future__ import annotations

__all__ = ["REFUSAL_HINT", "describe", "is_outage", "is_refusal"]

# DB-API errors that mean the database is away or refused, not that flagware
# is wrong (sqlite3's and psycopg's; psycopg's timeouts subclass them), and
# flagware's own word for a store it cannot reach (results on the diagnostics
# page during an outage logged a traceback for it; by name: it is defined in
# flagware.events.store, which imports this module).
_OUTAGE_ERRORS = frozenset(("OperationalError", "InterfaceError", "StoreUnavailable"))


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says something is away (a database, the network), not a bug."""
    if isinstance(exc, OSError):  # connections refused or reset, timeouts, a full disk
        return True
    return any(cls.__name__ in _OUTAGE_ERRORS for cls in type(exc).__mro__)


# A server that answered and refused what the URL asks for (a wrong password,
# user or database name): a mistake in the URL, which does not pass by itself
# like an outage (libpq's connection errors carry no SQLSTATE to tell by).
_REFUSALS = ("does not exist", "authentication failed", "pg_hba.conf", "permission denied")


# What a refusal's messages tell the user to check (the app's log, the CLI).
REFUSAL_HINT = "check its user, password and database name"


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is a database refusing the URL's credentials or database."""
    said = str(exc)
    return "FATAL:" in said and any(refusal in said for refusal in _REFUSALS)


def describe(exc: BaseException) -> str:
    """``exc`` on one line: its type (module-qualified unless built in) and message."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    message = " ".join(str(exc).split())  # psycopg's messages span lines
    return f"{name}: {message}" if message else name
