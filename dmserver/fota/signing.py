"""Firmware signing keys: ECDSA P-256 with SHA-256.

This module owns the signing key pair that firmware packages are signed
with: creating it (``init_keys``), loading it (``load_private_key``,
``load_certificate``) and the raw signature primitives that
``dmserver.fota.package`` builds on. It does not know the package layout.

Why P-256: it is the elliptic curve that handset secure-boot ROMs, hardware
security modules and carrier PKIs support most widely, and every X.509
toolchain verifies it. Ed25519 would be simpler to implement correctly, but
few handset bootloaders ship it.

Signatures are carried as the fixed-size raw form ``r || s`` (two 32-byte
big-endian integers, the IEEE P1363 encoding) rather than DER. A device then
reads a known number of bytes and needs no ASN.1 parser, and one signature
has exactly one encoding.

Example::

    key_path, cert_path = init_keys(Path("/etc/dmserver/keys"))
    key = load_private_key(key_path)
    signature = sign_raw(key, b"message")
    assert verify_raw(load_certificate(cert_path).public_key(), signature,
                      b"message")
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import logging
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "signing-key.pem"
CERT_FILE_NAME = "signing-cert.pem"
KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644

CURVE_NAME = "secp256r1"  # NIST P-256, also known as prime256v1
SCALAR_SIZE = 32  # bytes in r and in s for P-256
RAW_SIGNATURE_SIZE = 2 * SCALAR_SIZE
KEY_ID_SIZE = 8  # leading bytes of SHA-256(SubjectPublicKeyInfo DER)

# No PEM key or certificate is this large, so a larger file is a wrong path
# (a firmware image, a log). The limit keeps it from being read whole.
MAX_KEY_FILE_SIZE = 64 * 1024


class SigningKeyError(ValueError):
    """A key or certificate file is unreadable or not an ECDSA P-256 key."""


def init_keys(
    directory: Path,
    common_name: str = "dmserver firmware signing",
    days: int = 3650,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Create a P-256 signing key and a self-signed certificate for it.

    Writes ``signing-key.pem`` (unencrypted PKCS#8, mode 0600) and
    ``signing-cert.pem`` (X.509, mode 0644) in ``directory``, creating the
    directory if needed. The certificate only carries the public key to
    devices and tools; it is marked for code signing and is not a CA.

    Args:
        directory: where to write both files.
        common_name: subject and issuer CN of the certificate.
        days: certificate validity from now, in days.
        overwrite: replace existing files instead of raising.

    Returns:
        The paths of the key file and the certificate file.

    Raises:
        FileExistsError: a file exists and ``overwrite`` is false. Neither
            file is written in that case.
        ValueError: ``days`` is not positive or ``common_name`` is empty.
    """
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    if not common_name:
        raise ValueError("common_name must not be empty")

    directory = Path(directory)
    key_path = directory / KEY_FILE_NAME
    cert_path = directory / CERT_FILE_NAME
    if not overwrite:
        for path in (key_path, cert_path):
            if path.exists():
                raise FileExistsError(
                    errno.EEXIST,
                    "signing file already exists. Pass overwrite=True to "
                    "replace the signing key and certificate",
                    str(path),
                )
    directory.mkdir(parents=True, exist_ok=True)

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_certificate(key, common_name, days)

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_file(key_path, key_pem, KEY_FILE_MODE, overwrite)
    _write_file(cert_path, cert_pem, CERT_FILE_MODE, overwrite)
    logger.info(
        "created firmware signing key %s (key id %s) and certificate %s",
        key_path,
        public_key_id(key.public_key()).hex(),
        cert_path,
    )
    return key_path, cert_path


def _self_signed_certificate(
    key: ec.EllipticCurvePrivateKey, common_name: str, days: int
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdate by an hour so that a device clock running slightly
        # behind does not see a certificate from the future.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with ``mode`` set before any byte lands.

    The file is created under a temporary name with its final mode, so a
    private key is never readable by others, not even for an instant. It is
    then renamed into place: without ``overwrite`` by a hard link, which
    fails if the target appeared meanwhile.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            # os.open applies the umask; fchmod sets the exact mode.
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read_key_file(path: Path, kind: str) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SigningKeyError(f"{kind} {path} not found") from None
    if size > MAX_KEY_FILE_SIZE:
        raise SigningKeyError(
            f"{kind} {path} is {size} bytes, but a PEM {kind} is at most "
            f"{MAX_KEY_FILE_SIZE} bytes, so this is probably the wrong file"
        )
    return path.read_bytes()


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"an EC key on curve {key.curve.name}"
    key_size = getattr(key, "key_size", None)
    kind = type(key).__name__.lstrip("_")
    if key_size:
        return f"a {kind} of {key_size} bits"
    return f"a {kind}"


def _check_curve(key: object, path: Path, kind: str) -> None:
    valid = isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey)
    if not valid or key.curve.name != CURVE_NAME:
        raise SigningKeyError(
            f"{kind} {path} contains {_describe_key(key)}; firmware signing needs "
            f"an ECDSA P-256 ({CURVE_NAME}) key. Create one with init_keys()."
        )


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM (or DER) ECDSA P-256 private key.

    Raises:
        SigningKeyError: the file is missing, not a private key, encrypted,
            or a key of another type or curve. The message names the file
            and what was found.
    """
    data = _read_key_file(path, "private key")
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError as exc:
        # cryptography raises TypeError for a missing password.
        raise SigningKeyError(
            f"private key {path} is encrypted; dmserver needs an unencrypted "
            "key file protected by file permissions (mode 0600)"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(
            f"private key {path} is not a valid PEM or DER private key: {exc}"
        ) from exc
    _check_curve(key, path, "private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Load a PEM (or DER) X.509 certificate that carries a P-256 key.

    Raises:
        SigningKeyError: the file is missing, not a certificate, or its
            public key is not ECDSA P-256.
    """
    data = _read_key_file(path, "certificate")
    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SigningKeyError(
            f"certificate {path} is not a valid PEM or DER X.509 certificate: {exc}"
        ) from exc
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(
            f"certificate {path} has an unsupported public key: {exc}"
        ) from exc
    _check_curve(public_key, path, "certificate")
    return cert


def to_public_key(
    key_or_cert: (
        ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | x509.Certificate
    ),
) -> ec.EllipticCurvePublicKey:
    """Return the P-256 public key of a public key, private key or certificate.

    Raises:
        TypeError: the argument is not one of those types.
        SigningKeyError: the key is not on P-256.
    """
    if isinstance(key_or_cert, x509.Certificate):
        public_key = key_or_cert.public_key()
    elif isinstance(key_or_cert, ec.EllipticCurvePrivateKey):
        public_key = key_or_cert.public_key()
    elif isinstance(key_or_cert, ec.EllipticCurvePublicKey):
        public_key = key_or_cert
    else:
        raise TypeError(
            "expected an EllipticCurvePublicKey, EllipticCurvePrivateKey or "
            f"x509.Certificate, got {type(key_or_cert).__name__}"
        )
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or (
        public_key.curve.name != CURVE_NAME
    ):
        raise SigningKeyError(
            f"the key is {_describe_key(public_key)}; firmware signatures use "
            f"ECDSA P-256 ({CURVE_NAME})"
        )
    return public_key


def public_key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """Return the 8-byte key identifier written into package headers.

    It is the first 8 bytes of SHA-256 over the DER SubjectPublicKeyInfo, so
    a device holding several keys picks the right one without trying each.
    It identifies, it does not authenticate: the signature does that.
    """
    spki = public_key.public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return hashlib.sha256(spki).digest()[:KEY_ID_SIZE]


def sign_raw(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """Sign ``message`` with ECDSA P-256/SHA-256 and return raw ``r || s``."""
    if private_key.curve.name != CURVE_NAME:
        raise SigningKeyError(
            f"the key is {_describe_key(private_key)}; firmware signatures use "
            f"ECDSA P-256 ({CURVE_NAME})"
        )
    der = private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(SCALAR_SIZE, "big") + s.to_bytes(SCALAR_SIZE, "big")


def verify_raw(
    public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes
) -> bool:
    """Return whether ``signature`` (raw ``r || s``) is valid for ``message``."""
    if len(signature) != RAW_SIGNATURE_SIZE:
        return False
    r = int.from_bytes(signature[:SCALAR_SIZE], "big")
    s = int.from_bytes(signature[SCALAR_SIZE:], "big")
    if r == 0 or s == 0:
        return False
    try:
        public_key.verify(
            encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        return False
    return True
