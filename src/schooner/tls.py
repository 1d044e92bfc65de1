"""HTTPS for the proxy: an ``ssl.SSLContext`` from ``http_options``' ``ssl_*`` fields.

The same function checks the files in the driver or CLI (before anything is
started, so the error appears where the user started the instance), in the
head (before it says it is ready) and in the proxy (which serves with the
context). Behaviour follows uvicorn, which Ray Serve's proxy runs on: the
certificate chain and key are loaded with the key's password; ``ssl_ca_certs``
is loaded into the context but client certificates are not requested
(``CERT_NONE``, uvicorn's default ``ssl_cert_reqs``).

A problem raises :class:`~schooner.exceptions.ServeConfigError` naming the
``http_options`` field, the file and the cause.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any

from schooner.exceptions import ServeConfigError

__all__ = [
    "PASSWORD_ENV",
    "TLS_FIELDS",
    "absolute_tls_paths",
    "create_ssl_context",
    "ssl_context_for",
]

#: The ``http_options`` fields that name files.
TLS_FIELDS = ("ssl_certfile", "ssl_keyfile", "ssl_ca_certs")
#: The environment variable that carries ``ssl_keyfile_password`` from the driver to the head
#: and from the head to the proxy (never their command lines, which any local user can read).
PASSWORD_ENV = "SCHOONER_SSL_KEYFILE_PASSWORD"


class _NoPassword(Exception):
    """Raised by the password callback when the key is encrypted and no password was given
    (without a callback, OpenSSL would prompt on the terminal)."""


def create_ssl_context(
    certfile: str,
    keyfile: str,
    password: str | None = None,
    ca_certs: str | None = None,
) -> ssl.SSLContext:
    """A server context serving ``certfile``'s chain with ``keyfile``; raises
    ServeConfigError for a file that is missing or unreadable, not PEM, a key that needs
    another password, or a key that does not belong to the certificate."""
    for field, path in (("ssl_certfile", certfile), ("ssl_keyfile", keyfile)) + (
        (("ssl_ca_certs", ca_certs),) if ca_certs else ()
    ):
        _check_readable(field, path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Parsed on its own first, so a bad certificate is not blamed on the key.
    _load_certificates(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), "ssl_certfile", certfile)
    asked = False

    def get_password() -> str:
        nonlocal asked
        asked = True
        if password is None:
            raise _NoPassword
        return password

    try:
        ctx.load_cert_chain(certfile, keyfile, get_password)
    except _NoPassword:
        raise _error(
            "ssl_keyfile", keyfile, "the key is encrypted; set http_options.ssl_keyfile_password"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise _error(
                "ssl_keyfile", keyfile, f"the key does not belong to the certificate {certfile!r}"
            ) from None
        if asked:
            raise _error(
                "ssl_keyfile_password",
                keyfile,
                "wrong password: the key could not be decrypted with it",
            ) from None
        raise _error("ssl_keyfile", keyfile, f"not a PEM private key{_detail(exc)}") from None
    ctx.verify_mode = ssl.CERT_NONE  # as uvicorn: ssl_ca_certs alone requests no client cert
    if ca_certs:
        _load_certificates(ctx, "ssl_ca_certs", ca_certs)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def ssl_context_for(options: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The context for ``http_options`` (a mapping), or None when HTTPS is not configured."""
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if not certfile and not keyfile:
        return None
    if not certfile or not keyfile:
        raise ServeConfigError(
            "http_options.ssl_keyfile and http_options.ssl_certfile must be given together "
            "to enable HTTPS."
        )
    return create_ssl_context(
        str(certfile),
        str(keyfile),
        options.get("ssl_keyfile_password") or None,
        options.get("ssl_ca_certs") or None,
    )


def absolute_tls_paths(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with relative ``ssl_*`` file paths made absolute (relative to this
    process's directory, where the user wrote them), so the head and proxy need not run
    in the same directory."""
    out = dict(options)
    for field in TLS_FIELDS:
        path = out.get(field)
        if path:
            out[field] = os.path.abspath(os.path.expanduser(str(path)))
    return out


def _check_readable(field: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _error(field, path, f"cannot read it: {exc.strerror or exc}") from None


def _load_certificates(ctx: ssl.SSLContext, field: str, path: str) -> None:
    """Load the PEM certificates of ``path`` into ``ctx``; a file with none is ``field``'s
    error."""
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise _error(field, path, f"no PEM certificate found in it{_detail(exc)}") from None


def _detail(exc: ssl.SSLError) -> str:
    """OpenSSL's reason code, if it gave one, e.g. `` (NO_CERTIFICATE_OR_CRL_FOUND)``."""
    return f" ({exc.reason})" if exc.reason else ""


def _error(field: str, path: str, cause: str) -> ServeConfigError:
    return ServeConfigError(f"Cannot serve HTTPS: http_options.{field} ({path!r}): {cause}.")
