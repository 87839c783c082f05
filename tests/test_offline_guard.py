"""The offline guard itself: it must refuse the internet and allow loopback."""

import socket

import pytest


def test_non_loopback_connect_is_refused(no_internet: list[str]) -> None:
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("93.184.215.14", 443))
    assert any("93.184.215.14" in r for r in no_internet)


def test_dns_lookup_is_refused() -> None:
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("statsigapi.net", 443)


def test_loopback_is_allowed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
