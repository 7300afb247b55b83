"""Forward Protocol v1 handshake: HELO / PING / PONG with shared key and optional users.

Spec ("Handshake Messages", https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1):

- server -> ``['HELO', {nonce, auth, keepalive}]``; ``auth`` is a salt for user passwords,
  empty when the server does not check users.
- client -> ``['PING', client_hostname, shared_key_salt,
  sha512_hex(shared_key_salt + client_hostname + nonce + shared_key),
  username, sha512_hex(auth_salt + username + password)]`` (the last two empty without users).
- server -> ``['PONG', auth_result, reason, server_hostname,
  sha512_hex(shared_key_salt + server_hostname + nonce + shared_key)]``; the server closes the
  connection after a failed PONG, the client after a PONG it cannot verify.

We send nonces and salts as ASCII-hex **str** (Fluent Bit refuses a bin salt) and accept str or
bin from peers; digests are over the raw bytes as they were on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from logferry.common.errors import HandshakeError
from logferry.common.protocol.encode import packb
from logferry.common.protocol.types import Helo, Ping, Pong

__all__ = [
    "ClientHandshake",
    "ServerHandshake",
    "encode_helo",
    "encode_ping",
    "encode_pong",
    "new_salt",
    "password_hexdigest",
    "shared_key_hexdigest",
]

_Text = str | bytes


def _b(value: _Text) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _wire(value: bytes) -> str | bytes:
    # Conservative in what we send: str whenever the bytes allow it (ours always do).
    return value.decode("ascii") if value.isascii() else value


def new_salt() -> bytes:
    """A fresh nonce or salt: 16 random bytes as 32 lowercase hex characters."""
    return secrets.token_hex(16).encode("ascii")


def shared_key_hexdigest(salt: _Text, hostname: _Text, nonce: _Text, shared_key: _Text) -> str:
    """``sha512_hex(shared_key_salt + hostname + nonce + shared_key)`` (PING and PONG digests).

    PING uses the client's hostname, PONG the server's; both use the client's salt and the
    server's nonce.
    """
    return hashlib.sha512(_b(salt) + _b(hostname) + _b(nonce) + _b(shared_key)).hexdigest()


def password_hexdigest(auth_salt: _Text, username: _Text, password: _Text) -> str:
    """``sha512_hex(auth_salt + username + password)`` (PING's password field)."""
    return hashlib.sha512(_b(auth_salt) + _b(username) + _b(password)).hexdigest()


def _digest_equal(a: str, b: str) -> bool:
    # Constant time; bytes so a non-ASCII digest from a peer cannot raise TypeError.
    return hmac.compare_digest(a.lower().encode("utf-8"), b.lower().encode("utf-8"))


def encode_helo(helo: Helo) -> bytes:
    """``['HELO', {'nonce', 'auth', 'keepalive'}]``."""
    options = {"nonce": _wire(helo.nonce), "auth": _wire(helo.auth), "keepalive": helo.keepalive}
    return packb(["HELO", options])


def encode_ping(ping: Ping) -> bytes:
    """``['PING', client_hostname, shared_key_salt, digest, username, password_digest]``."""
    return packb(
        [
            "PING",
            ping.client_hostname,
            _wire(ping.shared_key_salt),
            ping.shared_key_hexdigest,
            ping.username,
            ping.password_hexdigest,
        ]
    )


def encode_pong(pong: Pong) -> bytes:
    """``['PONG', auth_result, reason, server_hostname, digest]``."""
    return packb(
        ["PONG", pong.auth_result, pong.reason, pong.server_hostname, pong.shared_key_hexdigest]
    )


class ServerHandshake:
    """Server side of one connection's handshake: issue HELO, check PING, answer PONG.

    ``users`` maps username -> raw password; when given (non-empty), HELO carries an ``auth``
    salt and PING must carry a matching username and password digest.
    """

    def __init__(
        self,
        *,
        shared_key: str,
        server_hostname: str,
        users: Mapping[str, str] | None = None,
        keepalive: bool = True,
        nonce: bytes | None = None,
        auth_salt: bytes | None = None,
    ) -> None:
        """``nonce`` and ``auth_salt`` are for tests; by default fresh ones are drawn."""
        self.shared_key = shared_key
        self.server_hostname = server_hostname
        self._users = dict(users or {})
        self.nonce = nonce if nonce is not None else new_salt()
        self.auth_salt = (
            (auth_salt if auth_salt is not None else new_salt()) if self._users else b""
        )
        self.keepalive = keepalive

    def helo(self) -> Helo:
        """The HELO to send as soon as the connection opens."""
        return Helo(nonce=self.nonce, auth=self.auth_salt, keepalive=self.keepalive)

    def answer_ping(self, ping: Ping) -> Pong:
        """The PONG for ``ping``: ``auth_result`` false with a reason when it is refused.

        Send it either way (the spec has the client learn the reason), then close the
        connection if ``auth_result`` is false.
        """
        expected = shared_key_hexdigest(
            ping.shared_key_salt, ping.client_hostname, self.nonce, self.shared_key
        )
        if not _digest_equal(ping.shared_key_hexdigest, expected):
            return self._pong(ping, False, "shared_key mismatch")
        if self._users:
            # Compare against a digest even for an unknown user: no timing hint of who exists.
            password = self._users.get(ping.username)
            candidate = password_hexdigest(self.auth_salt, ping.username, password or "")
            ok = _digest_equal(ping.password_hexdigest, candidate)
            if password is None or not ok:
                return self._pong(ping, False, "username/password mismatch")
        return self._pong(ping, True, "")

    def verify_ping(self, ping: Ping) -> Pong:
        """The success PONG for ``ping``, or HandshakeError (wrong shared key or credentials)."""
        pong = self.answer_ping(ping)
        if not pong.auth_result:
            raise HandshakeError(f"PING from {ping.client_hostname!r} refused: {pong.reason}")
        return pong

    def _pong(self, ping: Ping, ok: bool, reason: str) -> Pong:
        if not ok:
            # A refused peer learns nothing computed with the key (no digest oracle).
            return Pong(False, reason, self.server_hostname, "")
        digest = shared_key_hexdigest(
            ping.shared_key_salt, self.server_hostname, self.nonce, self.shared_key
        )
        return Pong(True, reason, self.server_hostname, digest)


class ClientHandshake:
    """Client side of one connection's handshake: answer HELO with PING, verify PONG."""

    def __init__(
        self,
        *,
        shared_key: str,
        client_hostname: str,
        username: str = "",
        password: str = "",
        salt: bytes | None = None,
    ) -> None:
        """``salt`` is for tests; by default a fresh one is drawn."""
        self.shared_key = shared_key
        self.client_hostname = client_hostname
        self.username = username
        self.password = password
        self.salt = salt if salt is not None else new_salt()
        self._nonce: bytes | None = None

    def ping(self, helo: Helo) -> Ping:
        """The PING answering ``helo`` (user credentials only if the server asked, via ``auth``)."""
        self._nonce = helo.nonce
        digest = shared_key_hexdigest(self.salt, self.client_hostname, helo.nonce, self.shared_key)
        if helo.auth:
            user_digest = password_hexdigest(helo.auth, self.username, self.password)
            return Ping(self.client_hostname, self.salt, digest, self.username, user_digest)
        return Ping(self.client_hostname, self.salt, digest, "", "")

    def verify_pong(self, pong: Pong) -> None:
        """Raise HandshakeError unless the server accepted us and proved it knows the key."""
        if self._nonce is None:
            raise HandshakeError("PONG before HELO")
        if not pong.auth_result:
            raise HandshakeError(f"server {pong.server_hostname!r} refused us: {pong.reason}")
        expected = shared_key_hexdigest(
            self.salt, pong.server_hostname, self._nonce, self.shared_key
        )
        if not _digest_equal(pong.shared_key_hexdigest, expected):
            raise HandshakeError(f"server {pong.server_hostname!r} sent a wrong shared key digest")
