"""Receiver security: TLS / mTLS material that reloads without a restart, and bearer tokens.

Reload happens when a watched file changes (checked every few seconds) or on SIGHUP. New
handshakes use the new certificate; connections and requests already in flight are not touched.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
from collections.abc import Callable

import grpc

log = logging.getLogger(__name__)

BEARER = "bearer "


class SecurityFileError(Exception):
    """A certificate, key or token file that cannot be used; the message names the file."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SecurityFileError(f"{path}: cannot read: {e.strerror}") from None


class TlsMaterial:
    """Certificate, key and optional client CA, as an SSLContext (HTTP) and gRPC credentials."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = ""):
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self.version = 0
        self._grpc_version_seen = -1
        self.context = self._build()

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file:
                context.load_verify_locations(cafile=self.client_ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, OSError) as e:
            raise SecurityFileError(
                f"TLS files {self.cert_file}, {self.key_file}"
                + (f", {self.client_ca_file}" if self.client_ca_file else "")
                + f": cannot load: {e}"
            ) from None
        self._pem = (_read(self.key_file), _read(self.cert_file), _read(self.client_ca_file) if self.client_ca_file else None)
        return context

    def reload(self) -> None:
        """Load the files again; on failure keep serving with the previous material."""
        try:
            context = self._build()
        except SecurityFileError as e:
            log.error("TLS reload failed, keeping the previous certificate: %s", e)
            return
        self.context = context
        self.version += 1
        log.info("TLS certificate reloaded from %s", self.cert_file)

    def server_context(self) -> ssl.SSLContext:
        """The context given to the HTTP server; each handshake switches to the current one."""
        outer = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        outer.minimum_version = ssl.TLSVersion.TLSv1_2
        outer.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            outer.load_verify_locations(cafile=self.client_ca_file)
            outer.verify_mode = ssl.CERT_REQUIRED

        def use_current(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            ssl_object.context = self.context

        outer.sni_callback = use_current
        return outer

    def grpc_credentials(self) -> grpc.ServerCredentials:
        key, cert, ca = self._pem
        return grpc.dynamic_ssl_server_credentials(
            grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca),
            self._grpc_fetch,
            require_client_authentication=bool(self.client_ca_file),
        )

    def _grpc_fetch(self):
        # Called by gRPC on new handshakes: a new configuration only when the files changed.
        if self._grpc_version_seen == self.version:
            return None
        self._grpc_version_seen = self.version
        key, cert, ca = self._pem
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


class TokenAuth:
    """Accepted bearer tokens from a file (one per line; blank lines and # comments ignored)."""

    def __init__(self, token_file: str):
        self.token_file = token_file
        self.files = (token_file,)
        self._tokens = self._load()

    def _load(self) -> tuple[bytes, ...]:
        lines = _read(self.token_file).decode("utf-8", "replace").splitlines()
        tokens = tuple(line.strip().encode() for line in lines if line.strip() and not line.strip().startswith("#"))
        if not tokens:
            raise SecurityFileError(f"{self.token_file}: no token in it (one token per line)")
        return tokens

    def reload(self) -> None:
        try:
            self._tokens = self._load()
        except SecurityFileError as e:
            log.error("token reload failed, keeping the previous tokens: %s", e)
            return
        log.info("bearer tokens reloaded from %s (%d accepted)", self.token_file, len(self._tokens))

    def allows(self, authorization: str | None) -> bool:
        """Constant-time check of an ``Authorization: Bearer <token>`` value against every token."""
        if not authorization or authorization[: len(BEARER)].lower() != BEARER:
            return False
        presented = authorization[len(BEARER):].strip().encode()
        # Compare with every token, without stopping early, so timing tells nothing about which matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched


class FileWatcher:
    """Calls ``on_change`` when any watched file's modification time or size changes."""

    def __init__(self, files: tuple[str, ...], on_change: Callable[[], None]):
        self.on_change = on_change
        self._stamps = {f: self._stamp(f) for f in files}

    @staticmethod
    def _stamp(path: str) -> tuple[float, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def check(self) -> bool:
        changed = False
        for path, old in self._stamps.items():
            new = self._stamp(path)
            if new != old:
                self._stamps[path] = new
                changed = True
        if changed:
            self.on_change()
        return changed
