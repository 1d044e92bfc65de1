"""HTTPS options: the SSL context and the errors for each bad input (field, file, cause)."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import pytest
from tls_certs import Certs, make_certs

from schooner import tls
from schooner.cli.config_cmds import unapplied_http_options
from schooner.exceptions import ServeConfigError
from schooner.runtime.head_launch import launch_head


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_context_from_cert_and_key(certs: Certs) -> None:
    ctx = tls.create_ssl_context(str(certs.cert), str(certs.key))
    assert ctx.verify_mode == ssl.CERT_NONE


def test_encrypted_key_with_password_and_ca_certs(certs: Certs) -> None:
    ctx = tls.create_ssl_context(
        str(certs.cert), str(certs.encrypted_key), certs.password, str(certs.ca)
    )
    # As uvicorn: the CA certificates are loaded, client certificates are not requested.
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.cert_store_stats()["x509_ca"] == 1


def _error(**options: object) -> str:
    with pytest.raises(ServeConfigError) as info:
        tls.ssl_context_for(options)
    return str(info.value)


def test_missing_certfile(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    text = _error(ssl_certfile=str(missing), ssl_keyfile=str(certs.key))
    assert "http_options.ssl_certfile" in text and str(missing) in text
    assert "No such file or directory" in text


def test_missing_keyfile(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    text = _error(ssl_certfile=str(certs.cert), ssl_keyfile=str(missing))
    assert "http_options.ssl_keyfile" in text and str(missing) in text
    assert "No such file or directory" in text


def test_unreadable_ca_certs(certs: Certs, tmp_path: Path) -> None:
    # A directory: unreadable as a file even for root (who can read a chmod 000 file).
    text = _error(ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key), ssl_ca_certs=tmp_path)
    assert "http_options.ssl_ca_certs" in text and str(tmp_path) in text
    assert "cannot read it: Is a directory" in text


def test_certfile_that_is_not_a_certificate(certs: Certs) -> None:
    text = _error(ssl_certfile=str(certs.key), ssl_keyfile=str(certs.key))
    assert "http_options.ssl_certfile" in text and str(certs.key) in text
    assert "no PEM certificate" in text


def test_keyfile_that_is_not_a_key(certs: Certs) -> None:
    text = _error(ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.cert))
    assert "http_options.ssl_keyfile" in text and str(certs.cert) in text
    assert "not a PEM private key" in text


def test_ca_certs_without_certificates(certs: Certs) -> None:
    text = _error(
        ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key), ssl_ca_certs=str(certs.key)
    )
    assert "http_options.ssl_ca_certs" in text and "no PEM certificate" in text


def test_wrong_password(certs: Certs) -> None:
    text = _error(
        ssl_certfile=str(certs.cert),
        ssl_keyfile=str(certs.encrypted_key),
        ssl_keyfile_password="wrong",
    )
    assert "http_options.ssl_keyfile_password" in text and str(certs.encrypted_key) in text
    assert "wrong password" in text


def test_encrypted_key_without_password_does_not_prompt(certs: Certs) -> None:
    text = _error(ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.encrypted_key))
    assert "http_options.ssl_keyfile" in text and "set http_options.ssl_keyfile_password" in text


def test_key_of_another_certificate(certs: Certs) -> None:
    text = _error(ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.other_key))
    assert "http_options.ssl_keyfile" in text and str(certs.other_key) in text
    assert "does not belong to the certificate" in text and str(certs.cert) in text


def test_key_without_certificate() -> None:
    text = _error(ssl_keyfile="key.pem")
    assert "ssl_keyfile and http_options.ssl_certfile must be given together" in text


def test_no_tls_options_means_plain_http() -> None:
    assert tls.ssl_context_for({"host": "127.0.0.1", "ssl_ca_certs": None}) is None


def test_relative_paths_become_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    options = tls.absolute_tls_paths({"ssl_certfile": "c.pem", "ssl_keyfile": None, "port": 1})
    assert options == {"ssl_certfile": str(tmp_path / "c.pem"), "ssl_keyfile": None, "port": 1}


def test_launch_head_checks_before_starting_anything(certs: Certs) -> None:
    base = Path(tempfile.gettempdir()) / "schooner"
    sessions = sorted(base.glob("session_*"))
    with pytest.raises(ServeConfigError, match=r"http_options\.ssl_keyfile_password"):
        launch_head(
            http_options={
                "ssl_certfile": str(certs.cert),
                "ssl_keyfile": str(certs.encrypted_key),
                "ssl_keyfile_password": "wrong",
            }
        )
    assert sorted(base.glob("session_*")) == sessions  # no session, so no process either


# -- http_options given to a running instance -------------------------------------------------
_APP = {"applications": [{"import_path": "m:app"}]}


def test_deploying_different_tls_options_warns() -> None:
    doc = {**_APP, "http_options": {"ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}}
    warning = unapplied_http_options(doc, {"ssl_certfile": None, "ssl_keyfile": None})
    assert warning is not None
    assert "ssl_keyfile, ssl_certfile differ from the running instance's" in warning
    assert "take effect only when an instance starts" in warning


def test_deploying_the_same_http_options_is_quiet() -> None:
    running = {"host": "0.0.0.0", "port": 8000, "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}
    running["ssl_keyfile_password"] = "********"
    doc = {
        **_APP,
        "http_options": {
            "port": 8000,
            "ssl_certfile": "/c.pem",
            "ssl_keyfile": "/k.pem",
            "ssl_keyfile_password": "secret",
        },
    }
    assert unapplied_http_options(doc, running) is None
    assert unapplied_http_options(_APP, running) is None
