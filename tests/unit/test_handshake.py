"""HELO/PING/PONG: digests per the spec formulas, refusals, str/bin variants of nonce and salt."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from logferry.common.errors import HandshakeError
from logferry.common.protocol import ClientDecoder, Helo, Ping, Pong, ServerDecoder
from logferry.common.protocol.handshake import (
    ClientHandshake,
    ServerHandshake,
    encode_helo,
    encode_ping,
    encode_pong,
    new_salt,
    password_hexdigest,
    shared_key_hexdigest,
)

NONCE = b"0123456789abcdef0123456789abcdef"
AUTH = b"fedcba9876543210fedcba9876543210"
SALT = b"aaaabbbbccccddddaaaabbbbccccdddd"


def sha512_hex(*parts: bytes) -> str:
    """The spec's sha512_hex(a + b + ...), computed here independently of the code under test."""
    h = hashlib.sha512()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def make_pair(users: dict[str, str] | None = None) -> tuple[ServerHandshake, ClientHandshake]:
    server = ServerHandshake(
        shared_key="s3cr3t", server_hostname="agg-0", users=users, nonce=NONCE, auth_salt=AUTH
    )
    client = ClientHandshake(
        shared_key="s3cr3t", client_hostname="node-1", username="alice", password="pw", salt=SALT
    )
    return server, client


def test_digest_helpers_follow_the_spec_formulas() -> None:
    assert shared_key_hexdigest(SALT, "node-1", NONCE, "k") == sha512_hex(
        SALT, b"node-1", NONCE, b"k"
    )
    assert password_hexdigest(AUTH, "alice", "pw") == sha512_hex(AUTH, b"alice", b"pw")
    # str and bytes give the same digest: digests are over the bytes on the wire.
    assert shared_key_hexdigest(SALT.decode(), b"node-1", NONCE.decode(), b"k") == sha512_hex(
        SALT, b"node-1", NONCE, b"k"
    )


def test_full_handshake_with_users_over_the_wire() -> None:
    server, client = make_pair(users={"alice": "pw"})
    client_rx, server_rx = ClientDecoder(), ServerDecoder()

    (helo,) = client_rx.feed(encode_helo(server.helo()))
    assert helo == Helo(NONCE, AUTH, keepalive=True)

    (ping,) = server_rx.feed(encode_ping(client.ping(helo)))
    assert isinstance(ping, Ping)
    # PING: sha512_hex(shared_key_salt + client_hostname + nonce + shared_key)
    assert ping.shared_key_hexdigest == sha512_hex(SALT, b"node-1", NONCE, b"s3cr3t")
    # password: sha512_hex(auth_salt + username + raw_password)
    assert ping.password_hexdigest == sha512_hex(AUTH, b"alice", b"pw")
    assert (ping.client_hostname, ping.shared_key_salt, ping.username) == ("node-1", SALT, "alice")

    pong = server.verify_ping(ping)
    # PONG: sha512_hex(shared_key_salt + server_hostname + nonce + shared_key)
    assert pong == Pong(True, "", "agg-0", sha512_hex(SALT, b"agg-0", NONCE, b"s3cr3t"))
    (pong_rx,) = client_rx.feed(encode_pong(pong))
    client.verify_pong(pong_rx)


def test_without_users_helo_has_empty_auth_and_ping_empty_credentials() -> None:
    server, client = make_pair()
    helo = server.helo()
    assert helo.auth == b""
    ping = client.ping(helo)
    assert (ping.username, ping.password_hexdigest) == ("", "")
    client.verify_pong(server.verify_ping(ping))


def test_wire_shapes_and_salts_sent_as_str() -> None:
    server, client = make_pair(users={"alice": "pw"})
    helo = msgpack.unpackb(encode_helo(server.helo()), raw=True)
    assert helo == [b"HELO", {b"nonce": NONCE, b"auth": AUTH, b"keepalive": True}]
    wire = encode_ping(client.ping(server.helo()))
    # ['PING', host, salt, digest, user, pw]: fixarray 6; the 32-char salt is a str8 (d9), not bin.
    assert wire[0] == 0x96
    items = msgpack.Unpacker(raw=True)
    items.feed(wire)
    items.read_array_header()
    for _ in range(2):
        items.skip()
    assert wire[items.tell() : items.tell() + 2] == b"\xd9\x20"
    assert len(msgpack.unpackb(encode_pong(server.verify_ping(client.ping(server.helo()))))) == 5


def test_wrong_shared_key_is_refused_with_a_failed_pong() -> None:
    server, _ = make_pair()
    intruder = ClientHandshake(shared_key="guess", client_hostname="node-1", salt=SALT)
    ping = intruder.ping(server.helo())
    pong = server.answer_ping(ping)
    assert (pong.auth_result, pong.reason) == (False, "shared_key mismatch")
    assert pong.shared_key_hexdigest == ""  # nothing computed with the key for a stranger
    with pytest.raises(HandshakeError, match="shared_key mismatch"):
        server.verify_ping(ping)
    with pytest.raises(HandshakeError, match="refused"):
        intruder.verify_pong(pong)


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "pw"), ("", "")])
def test_wrong_credentials_are_refused(user: str, password: str) -> None:
    server, _ = make_pair(users={"alice": "pw"})
    client = ClientHandshake(
        shared_key="s3cr3t", client_hostname="n", username=user, password=password
    )
    ping = client.ping(server.helo())
    refused = server.answer_ping(ping)
    assert (refused.reason, refused.shared_key_hexdigest) == ("username/password mismatch", "")
    with pytest.raises(HandshakeError):
        server.verify_ping(ping)


def test_client_refuses_a_pong_with_a_wrong_digest() -> None:
    server, client = make_pair()
    client.ping(server.helo())
    impostor = ServerHandshake(shared_key="other", server_hostname="agg-0", nonce=NONCE)
    pong = impostor._pong(client.ping(server.helo()), True, "")
    with pytest.raises(HandshakeError, match="wrong shared key digest"):
        client.verify_pong(pong)


def test_client_refuses_a_pong_before_helo() -> None:
    _, client = make_pair()
    with pytest.raises(HandshakeError):
        client.verify_pong(Pong(True, "", "agg-0", "00"))


def test_bin_nonce_salt_and_fields_are_accepted() -> None:
    # Peers differ on str vs bin; digests are over the raw bytes either way.
    nonce, auth, salt = b"\x00\xffnonce", b"\x01\xfeauth", b"\x02\xfdsalt"
    server = ServerHandshake(
        shared_key="k", server_hostname="agg", users={"u": "p"}, nonce=nonce, auth_salt=auth
    )
    (helo,) = ClientDecoder().feed(msgpack.packb(["HELO", {"nonce": nonce, "auth": auth}]))
    assert (helo.nonce, helo.auth) == (nonce, auth)
    ping_wire = msgpack.packb(
        [
            "PING",
            b"cli",
            salt,
            sha512_hex(salt, b"cli", nonce, b"k").encode(),
            b"u",
            sha512_hex(auth, b"u", b"p").encode(),
        ]
    )
    (ping,) = ServerDecoder().feed(ping_wire)
    assert isinstance(ping, Ping)
    assert ping.shared_key_salt == salt
    pong = server.verify_ping(ping)
    assert pong.shared_key_hexdigest == sha512_hex(salt, b"agg", nonce, b"k")


def test_str_salt_with_non_ascii_bytes_round_trips_to_the_same_digest() -> None:
    # A str salt is hashed as its UTF-8 bytes, as a Ruby or C peer would.
    salt = "sälz".encode()
    ping_wire = msgpack.packb(
        ["PING", "cli", salt.decode(), sha512_hex(salt, b"cli", NONCE, b"k"), "", ""]
    )
    (ping,) = ServerDecoder().feed(ping_wire)
    assert isinstance(ping, Ping)
    server = ServerHandshake(shared_key="k", server_hostname="agg", nonce=NONCE)
    assert server.verify_ping(ping).auth_result


def test_uppercase_hex_digest_is_accepted() -> None:
    server, client = make_pair()
    ping = client.ping(server.helo())
    upper = Ping(ping.client_hostname, ping.shared_key_salt, ping.shared_key_hexdigest.upper())
    assert server.verify_ping(upper).auth_result


def test_non_ascii_digest_is_refused_not_crashed() -> None:
    server, client = make_pair()
    ping = client.ping(server.helo())
    with pytest.raises(HandshakeError):
        server.verify_ping(Ping(ping.client_hostname, ping.shared_key_salt, "é" * 128))


def test_fresh_salts_are_ascii_hex_and_differ() -> None:
    a, b = new_salt(), new_salt()
    assert a != b
    assert len(a) == 32
    int(a, 16)
    server = ServerHandshake(shared_key="k", server_hostname="s", users={"u": "p"})
    assert server.nonce != server.auth_salt
