"""Signed firmware update packages: build, read, verify and apply.

This module owns the container format that dmserver delivers as the FUMO
firmware update package. docs/package-format.md documents it byte by
byte; in short::

    header (32 bytes, fixed)  magic, format version, signature algorithm,
                              key id, manifest length, payload length
    manifest                  canonical JSON, at most MAX_MANIFEST_SIZE bytes
    payload                   the full image or a bsdiff4 delta
    signature (64 bytes)      ECDSA P-256 over header + manifest + SHA-256(payload)

All lengths come before the data they describe, so a device can check the
header, read the bounded manifest, hash the payload while storing it, and
check the signature at the end, without holding the package in memory.

Workflow:

- the server calls ``build_package`` with a ``Manifest`` (see
  ``Manifest.for_full`` and ``Manifest.for_delta``) and the signing key;
- a device, or the simulator, calls ``verify_package`` (or
  ``verify_package_stream``) with the public key or certificate, then
  ``apply_package`` with its current image.

Each exception carries the FUMO result code a device reports for it in
``fumo_result_code``.

Example::

    manifest = Manifest.for_delta("ACME-100", "1.0", old, "1.1", new, delta)
    data = build_package(manifest, delta, private_key)
    manifest, payload = verify_package(data, certificate)
    assert apply_package(manifest, payload, old) == new
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import struct
from dataclasses import asdict, dataclass, fields
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from dmserver.fota import signing
from dmserver.fota.delta import DELTA_ALGORITHM, DeltaError, apply_delta

logger = logging.getLogger(__name__)

# The magic follows the PNG pattern: a non-ASCII first byte catches 7-bit
# transfers, and CR LF, SUB, LF catch line-ending conversion and DOS
# "type" output.
MAGIC = b"\x89DMF\r\n\x1a\n"
FORMAT_VERSION = 1
SIGNATURE_ALGORITHM_ECDSA_P256_SHA256 = 1

# magic, format version, signature algorithm, key id, manifest length,
# payload length; all integers big-endian.
HEADER_STRUCT = struct.Struct(">8sHH8sIQ")
HEADER_SIZE = HEADER_STRUCT.size  # 32
SIGNATURE_SIZE = signing.RAW_SIGNATURE_SIZE  # 64

# A manifest of all fields with 64-character strings encodes to 651 bytes
# (ASCII) or 2,763 bytes (every character escaped as a surrogate pair);
# 4 KiB covers both and is small enough for a feature phone to buffer.
MAX_MANIFEST_SIZE = 4096
# Largest image or payload accepted. Diffing needs about 20 times the source
# size in memory (bsdiff4 1.3.2 peaked at 90 MiB RSS on a 4.5 MiB image).
# NOTE: 256 MiB is an estimate of the largest feature phone image, not a
# figure from any handset vendor.
MAX_IMAGE_SIZE = 256 * 1024 * 1024
MAX_PAYLOAD_SIZE = MAX_IMAGE_SIZE
MAX_TEXT_LENGTH = 64  # characters in model and version strings

PAYLOAD_TYPE_FULL = "full"
PAYLOAD_TYPE_DELTA = "delta"
PAYLOAD_TYPES = (PAYLOAD_TYPE_FULL, PAYLOAD_TYPE_DELTA)

STREAM_CHUNK_SIZE = 64 * 1024

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_CREATED_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


class PackageError(ValueError):
    """The package container is malformed or its payload is corrupted."""

    fumo_result_code = 402  # Corrupted Firmware Update Package


class SignatureInvalid(PackageError):
    """The package signature does not verify with the given key."""

    fumo_result_code = 404  # Failed Firmware Update Package Validation


class SourceMismatch(PackageError):
    """The device image differs from the image the delta was made from."""

    fumo_result_code = 403  # Firmware Update Package - Device Mismatch


class TargetMismatch(PackageError):
    """The image produced by the package is not the declared target."""

    fumo_result_code = 410  # Firmware Update Failed


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _format_created(moment: datetime.datetime | None) -> str:
    if moment is None:
        moment = datetime.datetime.now(datetime.timezone.utc)
    if moment.tzinfo is None:
        raise ValueError("created must be timezone-aware")
    return moment.astimezone(datetime.timezone.utc).strftime(_CREATED_FORMAT)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The signed description of a package: what it updates and to what.

    Sizes are in bytes and digests are lowercase hex SHA-256. A full
    package has no source fields and no delta algorithm; a delta package
    has all of them. ``created`` is UTC in the form 2024-05-01T12:00:00Z.
    """

    model: str
    source_version: str | None = None
    source_sha256: str | None = None
    source_size: int | None = None
    target_version: str
    target_sha256: str
    target_size: int
    payload_type: str
    payload_size: int
    payload_sha256: str
    delta_algorithm: str | None = None
    created: str

    def __post_init__(self) -> None:
        self._check_text("model", self.model)
        self._check_text("target_version", self.target_version)
        self._check_digest("target_sha256", self.target_sha256)
        self._check_size("target_size", self.target_size, MAX_IMAGE_SIZE)
        self._check_digest("payload_sha256", self.payload_sha256)
        self._check_size("payload_size", self.payload_size, MAX_PAYLOAD_SIZE)
        self._check_created()

        if self.payload_type == PAYLOAD_TYPE_FULL:
            self._check_full()
        elif self.payload_type == PAYLOAD_TYPE_DELTA:
            self._check_delta()
        else:
            raise PackageError(
                f"manifest payload_type must be one of {PAYLOAD_TYPES}, "
                f"got {self.payload_type!r}"
            )

    def _check_full(self) -> None:
        source_fields = {
            "source_version": self.source_version,
            "source_sha256": self.source_sha256,
            "source_size": self.source_size,
            "delta_algorithm": self.delta_algorithm,
        }
        for name, value in source_fields.items():
            if value is not None:
                raise PackageError(
                    f"manifest of a full package must have {name} null, got {value!r}"
                )
        # The payload of a full package is the target image itself.
        if self.payload_size != self.target_size:
            raise PackageError(
                f"full package payload_size {self.payload_size} differs from "
                f"target_size {self.target_size}"
            )
        if self.payload_sha256 != self.target_sha256:
            raise PackageError("full package payload_sha256 differs from target_sha256")

    def _check_delta(self) -> None:
        self._check_text("source_version", self.source_version)
        self._check_digest("source_sha256", self.source_sha256)
        self._check_size("source_size", self.source_size, MAX_IMAGE_SIZE)
        if self.delta_algorithm != DELTA_ALGORITHM:
            raise PackageError(
                f"manifest delta_algorithm must be {DELTA_ALGORITHM!r} for a "
                f"delta package, got {self.delta_algorithm!r}"
            )

    @staticmethod
    def _check_text(name: str, value: object) -> None:
        if not isinstance(value, str):
            raise PackageError(
                f"manifest {name} must be a string, got {type(value).__name__}"
            )
        if not 1 <= len(value) <= MAX_TEXT_LENGTH:
            raise PackageError(
                f"manifest {name} must be 1 to {MAX_TEXT_LENGTH} characters, "
                f"got {len(value)}"
            )
        if not value.isprintable():
            raise PackageError(
                f"manifest {name} contains control characters: {value!r}"
            )

    @staticmethod
    def _check_digest(name: str, value: object) -> None:
        if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
            raise PackageError(
                f"manifest {name} must be 64 lowercase hex digits, got {value!r}"
            )

    @staticmethod
    def _check_size(name: str, value: object, maximum: int) -> None:
        # bool is a subclass of int; JSON true must not pass as 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise PackageError(f"manifest {name} must be an integer, got {value!r}")
        if not 0 <= value <= maximum:
            raise PackageError(
                f"manifest {name} must be between 0 and {maximum}, got {value}"
            )

    def _check_created(self) -> None:
        created = self.created
        if not isinstance(created, str) or not _CREATED_PATTERN.fullmatch(created):
            raise PackageError(
                "manifest created must be UTC time in the form "
                f"2024-05-01T12:00:00Z, got {created!r}"
            )
        try:
            datetime.datetime.strptime(created, _CREATED_FORMAT)
        except ValueError as exc:
            raise PackageError(f"manifest created is not a valid time: {exc}") from exc

    @classmethod
    def for_full(
        cls,
        model: str,
        target_version: str,
        target_image: bytes,
        created: datetime.datetime | None = None,
    ) -> Manifest:
        """Describe a full package whose payload is ``target_image``."""
        digest = _sha256_hex(target_image)
        return cls(
            model=model,
            target_version=target_version,
            target_sha256=digest,
            target_size=len(target_image),
            payload_type=PAYLOAD_TYPE_FULL,
            payload_size=len(target_image),
            payload_sha256=digest,
            created=_format_created(created),
        )

    @classmethod
    def for_delta(
        cls,
        model: str,
        source_version: str,
        source_image: bytes,
        target_version: str,
        target_image: bytes,
        delta: bytes,
        created: datetime.datetime | None = None,
    ) -> Manifest:
        """Describe a delta package that turns ``source_image`` into
        ``target_image`` with the bsdiff4 ``delta``."""
        return cls(
            model=model,
            source_version=source_version,
            source_sha256=_sha256_hex(source_image),
            source_size=len(source_image),
            target_version=target_version,
            target_sha256=_sha256_hex(target_image),
            target_size=len(target_image),
            payload_type=PAYLOAD_TYPE_DELTA,
            payload_size=len(delta),
            payload_sha256=_sha256_hex(delta),
            delta_algorithm=DELTA_ALGORITHM,
            created=_format_created(created),
        )

    def to_json(self) -> bytes:
        """Return the canonical JSON encoding that goes into a package.

        Canonical means keys sorted, no whitespace, ASCII only (other
        characters as \\u escapes) and null for absent fields, so one
        manifest has exactly one encoding.
        """
        return json.dumps(
            asdict(self),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        ).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse a manifest and require that it is in canonical form.

        Raises:
            PackageError: oversize, not UTF-8 JSON, not an object, duplicate
                or unknown or missing keys, invalid values, or any encoding
                other than the canonical one.
        """
        if len(data) > MAX_MANIFEST_SIZE:
            raise PackageError(
                f"manifest is {len(data)} bytes, the limit is {MAX_MANIFEST_SIZE}"
            )
        try:
            document = json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_reject_duplicate_keys,
                parse_float=_reject_float,
                parse_constant=_reject_float,
            )
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise PackageError(f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise PackageError(
                f"manifest must be a JSON object, got {type(document).__name__}"
            )

        names = {field.name for field in fields(cls)}
        unknown = sorted(set(document) - names)
        missing = sorted(names - set(document))
        if unknown:
            raise PackageError(f"manifest has unknown keys: {', '.join(unknown)}")
        if missing:
            raise PackageError(f"manifest is missing keys: {', '.join(missing)}")

        manifest = cls(**document)
        if manifest.to_json() != data:
            raise PackageError(
                "manifest is not in canonical form (sorted keys, no "
                "whitespace, ASCII with \\u escapes)"
            )
        return manifest


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise PackageError(f"manifest has the key {key!r} twice")
        document[key] = value
    return document


def _reject_float(text: str) -> None:
    raise PackageError(f"manifest contains a non-integer number: {text}")


@dataclass(frozen=True)
class PackageHeader:
    """The fixed-size header at the start of every package."""

    format_version: int
    signature_algorithm: int
    key_id: bytes
    manifest_length: int
    payload_length: int

    def pack(self) -> bytes:
        return HEADER_STRUCT.pack(
            MAGIC,
            self.format_version,
            self.signature_algorithm,
            self.key_id,
            self.manifest_length,
            self.payload_length,
        )

    @property
    def package_size(self) -> int:
        """Total package length in bytes that this header declares."""
        return HEADER_SIZE + self.manifest_length + self.payload_length + SIGNATURE_SIZE


def parse_header(data: bytes) -> PackageHeader:
    """Parse and check the first ``HEADER_SIZE`` bytes of a package.

    Raises:
        PackageError: truncated, wrong magic, unsupported format version or
            signature algorithm, or a length over its limit.
    """
    if len(data) < HEADER_SIZE:
        raise PackageError(
            f"package is truncated: {len(data)} bytes, the header alone is "
            f"{HEADER_SIZE}"
        )
    magic, version, algorithm, key_id, manifest_length, payload_length = (
        HEADER_STRUCT.unpack_from(data)
    )
    if magic != MAGIC:
        raise PackageError(
            f"not a dmserver firmware package: magic is {magic!r}, expected {MAGIC!r}"
        )
    if version != FORMAT_VERSION:
        raise PackageError(
            f"unsupported package format version {version}; this reader "
            f"supports version {FORMAT_VERSION}"
        )
    if algorithm != SIGNATURE_ALGORITHM_ECDSA_P256_SHA256:
        raise PackageError(
            f"unsupported signature algorithm {algorithm}; expected "
            f"{SIGNATURE_ALGORITHM_ECDSA_P256_SHA256} (ECDSA P-256 SHA-256)"
        )
    if not 2 <= manifest_length <= MAX_MANIFEST_SIZE:
        raise PackageError(
            f"manifest length {manifest_length} is outside 2..{MAX_MANIFEST_SIZE}"
        )
    if payload_length > MAX_PAYLOAD_SIZE:
        raise PackageError(
            f"payload length {payload_length} exceeds the limit {MAX_PAYLOAD_SIZE}"
        )
    return PackageHeader(version, algorithm, key_id, manifest_length, payload_length)


def signature_input(header: bytes, manifest: bytes, payload_digest: bytes) -> bytes:
    """Return the bytes the signature covers: header, manifest, SHA-256(payload).

    Signing the payload digest instead of the payload lets a device verify
    after streaming the payload to storage, with only 32 bytes kept.
    """
    return header + manifest + payload_digest


def _check_payload(manifest: Manifest, header: PackageHeader, digest: bytes) -> None:
    if manifest.payload_size != header.payload_length:
        raise PackageError(
            f"manifest payload_size {manifest.payload_size} differs from the "
            f"header payload length {header.payload_length}"
        )
    if digest.hex() != manifest.payload_sha256:
        raise PackageError(
            f"payload SHA-256 is {digest.hex()}, the manifest declares "
            f"{manifest.payload_sha256}"
        )


def build_package(
    manifest: Manifest, payload: bytes, key: ec.EllipticCurvePrivateKey
) -> bytes:
    """Assemble and sign a package.

    Raises:
        PackageError: the payload does not match the manifest's size and
            SHA-256, or the manifest encodes to more than MAX_MANIFEST_SIZE.
        SigningKeyError: the key is not ECDSA P-256.
    """
    manifest_bytes = manifest.to_json()
    if len(manifest_bytes) > MAX_MANIFEST_SIZE:
        raise PackageError(
            f"manifest encodes to {len(manifest_bytes)} bytes, the limit is "
            f"{MAX_MANIFEST_SIZE}"
        )
    header = PackageHeader(
        format_version=FORMAT_VERSION,
        signature_algorithm=SIGNATURE_ALGORITHM_ECDSA_P256_SHA256,
        key_id=signing.public_key_id(key.public_key()),
        manifest_length=len(manifest_bytes),
        payload_length=len(payload),
    )
    digest = hashlib.sha256(payload).digest()
    _check_payload(manifest, header, digest)

    header_bytes = header.pack()
    signature = signing.sign_raw(
        key, signature_input(header_bytes, manifest_bytes, digest)
    )
    logger.debug(
        "built %s package %s %s -> %s: %d bytes payload, key id %s",
        manifest.payload_type,
        manifest.model,
        manifest.source_version,
        manifest.target_version,
        len(payload),
        header.key_id.hex(),
    )
    return header_bytes + manifest_bytes + payload + signature


def _split_package(data: bytes) -> tuple[PackageHeader, bytes, bytes, bytes]:
    header = parse_header(data)
    if len(data) < header.package_size:
        raise PackageError(
            f"package is truncated: {len(data)} bytes, the header declares "
            f"{header.package_size}"
        )
    if len(data) > header.package_size:
        raise PackageError(
            f"package has {len(data) - header.package_size} bytes after the signature"
        )
    manifest_end = HEADER_SIZE + header.manifest_length
    payload_end = manifest_end + header.payload_length
    return (
        header,
        data[HEADER_SIZE:manifest_end],
        data[manifest_end:payload_end],
        data[payload_end:],
    )


def read_package(data: bytes) -> tuple[Manifest, bytes, bytes]:
    """Parse a package without checking its signature.

    Returns:
        The manifest, the payload and the 64-byte raw signature.

    Raises:
        PackageError: any malformation: truncation, trailing bytes, bad
            magic, unsupported version, oversize or invalid manifest, a
            length that disagrees with the manifest, or a payload whose
            SHA-256 differs from the manifest.
    """
    header, manifest_bytes, payload, signature = _split_package(data)
    manifest = Manifest.from_json(manifest_bytes)
    _check_payload(manifest, header, hashlib.sha256(payload).digest())
    return manifest, payload, signature


PublicKeyOrCertificate = ec.EllipticCurvePublicKey | x509.Certificate


def _check_key_id(header: PackageHeader, public_key: ec.EllipticCurvePublicKey) -> None:
    expected_key_id = signing.public_key_id(public_key)
    if header.key_id != expected_key_id:
        raise SignatureInvalid(
            f"package names signing key id {header.key_id.hex()}, the "
            f"verifying key has id {expected_key_id.hex()}"
        )


def _check_signature(
    header_bytes: bytes,
    manifest_bytes: bytes,
    digest: bytes,
    signature: bytes,
    public_key: ec.EllipticCurvePublicKey,
) -> None:
    message = signature_input(header_bytes, manifest_bytes, digest)
    if not signing.verify_raw(public_key, signature, message):
        raise SignatureInvalid("package signature does not verify")


def verify_package(
    data: bytes, public_key_or_cert: PublicKeyOrCertificate
) -> tuple[Manifest, bytes]:
    """Parse a package and verify its signature.

    The certificate's validity period is not checked: it only carries the
    public key, and a feature phone has no trusted clock to compare with.

    Returns:
        The manifest and the payload, both covered by the signature.

    Raises:
        PackageError: the package is malformed (see ``read_package``).
        SignatureInvalid: the key id or the signature does not match.
    """
    public_key = signing.to_public_key(public_key_or_cert)
    header, manifest_bytes, payload, signature = _split_package(data)
    _check_key_id(header, public_key)
    manifest = Manifest.from_json(manifest_bytes)
    digest = hashlib.sha256(payload).digest()
    _check_payload(manifest, header, digest)
    _check_signature(data[:HEADER_SIZE], manifest_bytes, digest, signature, public_key)
    return manifest, payload


def _read_exact(stream: BinaryIO, size: int, section: str) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(min(remaining, STREAM_CHUNK_SIZE))
        if not chunk:
            raise PackageError(
                f"package is truncated in the {section}: {size - remaining} of "
                f"{size} bytes read"
            )
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def verify_package_stream(
    stream: BinaryIO,
    public_key_or_cert: PublicKeyOrCertificate,
    payload_sink: BinaryIO | None = None,
) -> Manifest:
    """Verify a package read from ``stream`` the way a device does.

    Memory use is bounded by the manifest limit and the chunk size, not
    the package size: the payload is hashed chunk by chunk and written to
    ``payload_sink`` (if given). The sink then contains unverified bytes until
    this function returns, so a caller must discard it on any exception.

    Returns:
        The manifest, after the payload digest and signature are checked.

    Raises:
        PackageError, SignatureInvalid: as ``verify_package``.
    """
    public_key = signing.to_public_key(public_key_or_cert)

    # Step 1: the fixed header gives every length up front and names the key.
    header_bytes = _read_exact(stream, HEADER_SIZE, "header")
    header = parse_header(header_bytes)
    _check_key_id(header, public_key)

    # Step 2: the manifest is bounded by MAX_MANIFEST_SIZE.
    manifest_bytes = _read_exact(stream, header.manifest_length, "manifest")
    manifest = Manifest.from_json(manifest_bytes)
    if manifest.payload_size != header.payload_length:
        raise PackageError(
            f"manifest payload_size {manifest.payload_size} differs from the "
            f"header payload length {header.payload_length}"
        )

    # Step 3: hash the payload while passing it on.
    hasher = hashlib.sha256()
    remaining = header.payload_length
    while remaining:
        chunk = stream.read(min(remaining, STREAM_CHUNK_SIZE))
        if not chunk:
            raise PackageError(
                f"package is truncated in the payload: "
                f"{header.payload_length - remaining} of "
                f"{header.payload_length} bytes read"
            )
        hasher.update(chunk)
        if payload_sink is not None:
            payload_sink.write(chunk)
        remaining -= len(chunk)
    digest = hasher.digest()
    _check_payload(manifest, header, digest)

    # Step 4: the signature is last, and nothing may follow it.
    signature = _read_exact(stream, SIGNATURE_SIZE, "signature")
    if stream.read(1):
        raise PackageError("package has bytes after the signature")
    _check_signature(header_bytes, manifest_bytes, digest, signature, public_key)
    return manifest


def apply_package(
    manifest: Manifest,
    payload: bytes,
    current_image: bytes,
    *,
    device_model: str | None = None,
) -> bytes:
    """Produce the target image from a verified package.

    Call this only with a manifest and payload returned by
    ``verify_package``: it trusts the manifest.

    Args:
        manifest: the package manifest.
        payload: the package payload.
        current_image: the image the device runs now. A full package
            ignores it.
        device_model: if given, must equal ``manifest.model``.

    Returns:
        The target image, its size and SHA-256 checked against the manifest.

    Raises:
        SourceMismatch: wrong device model, or (delta) the current image
            differs in size or SHA-256 from the manifest's source.
        PackageError: the payload does not match the manifest, or the delta
            cannot be applied.
        TargetMismatch: the result differs from the declared target.
    """
    if device_model is not None and device_model != manifest.model:
        raise SourceMismatch(
            f"package is for model {manifest.model!r}, the device is {device_model!r}"
        )
    if len(payload) != manifest.payload_size or (
        _sha256_hex(payload) != manifest.payload_sha256
    ):
        raise PackageError("payload does not match the manifest size and SHA-256")

    if manifest.payload_type == PAYLOAD_TYPE_DELTA:
        current_digest = _sha256_hex(current_image)
        if (
            len(current_image) != manifest.source_size
            or current_digest != manifest.source_sha256
        ):
            raise SourceMismatch(
                f"delta applies to {manifest.source_version} "
                f"({manifest.source_size} bytes, SHA-256 "
                f"{manifest.source_sha256}); the current image is "
                f"{len(current_image)} bytes, SHA-256 {current_digest}"
            )
        try:
            result = apply_delta(
                current_image, payload, expected_size=manifest.target_size
            )
        except DeltaError as exc:
            raise PackageError(f"delta payload cannot be applied: {exc}") from exc
    else:
        result = payload

    result_digest = _sha256_hex(result)
    if len(result) != manifest.target_size or result_digest != manifest.target_sha256:
        raise TargetMismatch(
            f"update produced {len(result)} bytes with SHA-256 {result_digest}; "
            f"the manifest declares {manifest.target_size} bytes with SHA-256 "
            f"{manifest.target_sha256}"
        )
    return result
