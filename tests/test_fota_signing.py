"""Tests for dmserver.fota.signing: key creation, loading and raw signatures."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dmserver.fota import signing
from dmserver.fota.signing import (
    SigningKeyError,
    init_keys,
    load_certificate,
    load_private_key,
)


def _write_pem_key(path: Path, key, password: bytes | None = None) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            encryption,
        )
    )
    return path


def test_init_keys_file_modes(tmp_path):
    old_umask = os.umask(0)  # the key must be 0600 even with a permissive umask
    try:
        key_path, cert_path = init_keys(tmp_path / "keys")
    finally:
        os.umask(old_umask)

    assert key_path == tmp_path / "keys" / "signing-key.pem"
    assert cert_path == tmp_path / "keys" / "signing-cert.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path / "keys")) == [
        "signing-cert.pem",
        "signing-key.pem",
    ]


def test_init_keys_certificate_contents(tmp_path):
    key_path, cert_path = init_keys(tmp_path, common_name="ACME FOTA", days=30)
    key = load_private_key(key_path)
    cert = load_certificate(cert_path)

    # Self-signed: the certificate verifies with its own public key.
    cert.verify_directly_issued_by(cert)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert isinstance(key.curve, ec.SECP256R1)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "ACME FOTA"
    assert cert.issuer == cert.subject
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days == 30  # 30 days plus the one-hour backdating
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert ExtendedKeyUsageOID.CODE_SIGNING in usage.value


def test_init_keys_rejects_existing_key(tmp_path):
    key_path, cert_path = init_keys(tmp_path)
    key_before = key_path.read_bytes()
    cert_before = cert_path.read_bytes()

    with pytest.raises(FileExistsError) as excinfo:
        init_keys(tmp_path)

    assert excinfo.value.filename == str(key_path)
    assert str(key_path) in str(excinfo.value)
    assert key_path.read_bytes() == key_before
    assert cert_path.read_bytes() == cert_before


def test_init_keys_rejects_existing_certificate(tmp_path):
    cert_path = tmp_path / "signing-cert.pem"
    cert_path.write_text("placeholder")

    with pytest.raises(FileExistsError) as excinfo:
        init_keys(tmp_path)

    assert excinfo.value.filename == str(cert_path)
    assert not (tmp_path / "signing-key.pem").exists()
    assert cert_path.read_text() == "placeholder"


def test_init_keys_overwrite_replaces_key(tmp_path):
    key_path, _ = init_keys(tmp_path)
    first = load_private_key(key_path).private_numbers().private_value

    init_keys(tmp_path, overwrite=True)

    second = load_private_key(key_path).private_numbers().private_value
    assert second != first
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_init_keys_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="days"):
        init_keys(tmp_path, days=0)
    with pytest.raises(ValueError, match="common_name"):
        init_keys(tmp_path, common_name="")


def test_load_private_key_rejects_rsa(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = _write_pem_key(tmp_path / "rsa.pem", rsa_key)

    with pytest.raises(SigningKeyError) as excinfo:
        load_private_key(path)

    message = str(excinfo.value)
    assert str(path) in message
    assert "RSA" in message
    assert "P-256" in message


def test_load_private_key_rejects_p384(tmp_path):
    path = _write_pem_key(
        tmp_path / "p384.pem", ec.generate_private_key(ec.SECP384R1())
    )

    with pytest.raises(SigningKeyError) as excinfo:
        load_private_key(path)

    assert "secp384r1" in str(excinfo.value)
    assert "P-256" in str(excinfo.value)


def test_load_private_key_rejects_encrypted(tmp_path):
    path = _write_pem_key(
        tmp_path / "enc.pem", ec.generate_private_key(ec.SECP256R1()), b"secret"
    )

    with pytest.raises(SigningKeyError, match="encrypted"):
        load_private_key(path)


def test_load_private_key_rejects_garbage(tmp_path):
    path = tmp_path / "garbage.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n")

    with pytest.raises(SigningKeyError, match="not a valid"):
        load_private_key(path)


def test_load_private_key_missing_file(tmp_path):
    with pytest.raises(SigningKeyError, match="not found"):
        load_private_key(tmp_path / "absent.pem")


def test_load_private_key_rejects_huge_file(tmp_path):
    path = tmp_path / "image.bin"
    path.write_bytes(b"\0" * (signing.MAX_KEY_FILE_SIZE + 1))

    with pytest.raises(SigningKeyError, match="wrong file"):
        load_private_key(path)


def test_load_private_key_accepts_der(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "key.der"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    loaded = load_private_key(path)

    assert loaded.private_numbers() == key.private_numbers()


def test_load_certificate_rejects_rsa_certificate(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    path = tmp_path / "rsa-cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    with pytest.raises(SigningKeyError) as excinfo:
        load_certificate(path)

    assert "P-256" in str(excinfo.value)


def test_load_certificate_rejects_key_file(tmp_path):
    key_path, _ = init_keys(tmp_path)

    with pytest.raises(SigningKeyError, match="not a valid"):
        load_certificate(key_path)


def test_sign_raw_verifies_as_der_ecdsa():
    key = ec.generate_private_key(ec.SECP256R1())
    message = b"header+manifest+digest"

    signature = signing.sign_raw(key, message)

    assert len(signature) == 64
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    # Independent check through the DER form that X.509 tooling uses.
    key.public_key().verify(
        encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256())
    )
    assert signing.verify_raw(key.public_key(), signature, message)
    assert not signing.verify_raw(key.public_key(), signature, message + b"x")
    assert not signing.verify_raw(key.public_key(), signature[:-1], message)
    assert not signing.verify_raw(key.public_key(), bytes(64), message)


def test_to_public_key_accepts_each_form(tmp_path):
    key_path, cert_path = init_keys(tmp_path)
    key = load_private_key(key_path)
    cert = load_certificate(cert_path)
    expected = key.public_key().public_numbers()

    assert signing.to_public_key(cert).public_numbers() == expected
    assert signing.to_public_key(key).public_numbers() == expected
    assert signing.to_public_key(key.public_key()).public_numbers() == expected
    with pytest.raises(TypeError):
        signing.to_public_key(b"not a key")
    with pytest.raises(SigningKeyError):
        signing.to_public_key(ec.generate_private_key(ec.SECP384R1()))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_key_id_and_signature_match_openssl(tmp_path):
    key_path, _ = init_keys(tmp_path)
    key = load_private_key(key_path)

    spki_der = subprocess.run(
        ["openssl", "pkey", "-in", str(key_path), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    assert (
        signing.public_key_id(key.public_key()) == hashlib.sha256(spki_der).digest()[:8]
    )

    message = b"firmware package signature input"
    raw = signing.sign_raw(key, message)
    der = encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    (tmp_path / "message").write_bytes(message)
    (tmp_path / "signature.der").write_bytes(der)
    (tmp_path / "public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    result = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(tmp_path / "public.pem"),
            "-signature",
            str(tmp_path / "signature.der"),
            str(tmp_path / "message"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verified OK" in result.stdout
