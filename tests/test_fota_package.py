"""Tests for dmserver.fota.package on the real libexpat firmware pair.

Expected digests are the published SHA-256 sums listed in
fixtures/firmware/PROVENANCE.md, not hashes of the fixture files.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmserver.fota import signing
from dmserver.fota.delta import make_delta
from dmserver.fota.package import (
    HEADER_SIZE,
    MAGIC,
    MAX_MANIFEST_SIZE,
    SIGNATURE_SIZE,
    Manifest,
    PackageError,
    SignatureInvalid,
    SourceMismatch,
    TargetMismatch,
    apply_package,
    build_package,
    read_package,
    verify_package,
    verify_package_stream,
)

FIRMWARE = Path(__file__).resolve().parent.parent / "fixtures" / "firmware"
U2_NAME = "libexpat-2.5.0-1+deb12u2.so"
U5_NAME = "libexpat-2.5.0-1+deb12u5.so"
U2_SHA256 = "a9a60cb5308ca1054427e2973b021ea63c2c801c71d8c0dc9d33218fee1d976a"
U5_SHA256 = "b342d94f6a71df596f19b1b0d4d3af9b883f0333027de6c3fc0dbc9ff8c45057"
U2_SIZE = 174_184
U5_SIZE = 186_472
CREATED = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)

PROFILE = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def images() -> tuple[bytes, bytes]:
    return (FIRMWARE / U2_NAME).read_bytes(), (FIRMWARE / U5_NAME).read_bytes()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    key_path, cert_path = signing.init_keys(directory)
    return signing.load_private_key(key_path), signing.load_certificate(cert_path)


@pytest.fixture(scope="module")
def delta(images) -> bytes:
    source, target = images
    return make_delta(source, target)


@pytest.fixture(scope="module")
def delta_manifest(images, delta) -> Manifest:
    source, target = images
    return Manifest.for_delta(
        "ACME-100",
        "2.5.0-1+deb12u2",
        source,
        "2.5.0-1+deb12u5",
        target,
        delta,
        created=CREATED,
    )


@pytest.fixture(scope="module")
def delta_package(delta_manifest, delta, keys) -> bytes:
    key, _ = keys
    return build_package(delta_manifest, delta, key)


def _flip(data: bytes, position: int, mask: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= mask
    return bytes(damaged)


def _manifest_end(package: bytes) -> int:
    return HEADER_SIZE + int.from_bytes(package[20:24], "big")


# Round trip


def test_delta_manifest_digests(delta_manifest, delta):
    assert delta_manifest.source_sha256 == U2_SHA256
    assert delta_manifest.source_size == U2_SIZE
    assert delta_manifest.target_sha256 == U5_SHA256
    assert delta_manifest.target_size == U5_SIZE
    assert delta_manifest.payload_type == "delta"
    assert delta_manifest.delta_algorithm == "bsdiff4"
    assert delta_manifest.payload_size == len(delta)
    assert delta_manifest.created == "2024-05-01T12:00:00Z"


def test_delta_package_round_trip(delta_package, delta_manifest, delta, keys, images):
    _, cert = keys
    source, _ = images

    manifest, payload, signature = read_package(delta_package)
    assert manifest == delta_manifest
    assert payload == delta
    assert len(signature) == SIGNATURE_SIZE

    manifest, payload = verify_package(delta_package, cert)
    assert manifest == delta_manifest
    assert payload == delta

    target = apply_package(manifest, payload, source, device_model="ACME-100")
    assert hashlib.sha256(target).hexdigest() == U5_SHA256
    assert len(target) == U5_SIZE


def test_full_package_round_trip(images, keys):
    key, cert = keys
    _, target = images
    manifest = Manifest.for_full("ACME-100", "2.5.0-1+deb12u5", target, CREATED)
    package = build_package(manifest, target, key)

    verified, payload = verify_package(package, cert.public_key())
    result = apply_package(verified, payload, b"any current image")

    assert verified.source_sha256 is None
    assert verified.delta_algorithm is None
    assert hashlib.sha256(result).hexdigest() == U5_SHA256


def test_stream_verification_matches(delta_package, delta_manifest, delta, keys):
    _, cert = keys
    sink = io.BytesIO()

    manifest = verify_package_stream(io.BytesIO(delta_package), cert, sink)

    assert manifest == delta_manifest
    assert sink.getvalue() == delta


# Byte layout, checked against docs/package-format.md


def test_header_layout(delta_package, delta_manifest, delta, keys):
    key, _ = keys
    manifest_bytes = delta_manifest.to_json()

    assert delta_package[0:8] == b"\x89DMF\r\n\x1a\n" == MAGIC
    assert int.from_bytes(delta_package[8:10], "big") == 1  # format version
    assert int.from_bytes(delta_package[10:12], "big") == 1  # ECDSA P-256
    assert delta_package[12:20] == signing.public_key_id(key.public_key())
    assert int.from_bytes(delta_package[20:24], "big") == len(manifest_bytes)
    assert int.from_bytes(delta_package[24:32], "big") == len(delta)
    assert delta_package[32 : 32 + len(manifest_bytes)] == manifest_bytes
    payload_start = 32 + len(manifest_bytes)
    assert delta_package[payload_start : payload_start + len(delta)] == delta
    assert len(delta_package) == 32 + len(manifest_bytes) + len(delta) + 64


def test_manifest_is_canonical_json(delta_package):
    manifest_bytes = delta_package[HEADER_SIZE : _manifest_end(delta_package)]
    document = json.loads(manifest_bytes)

    assert list(document) == sorted(document)
    assert b" " not in manifest_bytes
    assert document["target_sha256"] == U5_SHA256
    assert document["source_sha256"] == U2_SHA256


def test_signature_input_layout(delta_package, delta, keys):
    """Verify with cryptography directly, following the documented input."""
    _, cert = keys
    manifest_end = _manifest_end(delta_package)
    message = (
        delta_package[:HEADER_SIZE]
        + delta_package[HEADER_SIZE:manifest_end]
        + hashlib.sha256(delta).digest()
    )
    raw = delta_package[-64:]
    der = encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )

    cert.public_key().verify(der, message, ec.ECDSA(hashes.SHA256()))


# Tampering and malformation


def test_header_manifest_flips_rejected(delta_package, keys):
    _, cert = keys
    for position in range(_manifest_end(delta_package)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = _flip(delta_package, position, mask)
            with pytest.raises(PackageError):
                verify_package(damaged, cert)


def test_payload_and_signature_flips_rejected(delta_package, keys):
    _, cert = keys
    payload_start = _manifest_end(delta_package)
    signature_start = len(delta_package) - SIGNATURE_SIZE
    step = max(1, (signature_start - payload_start) // 97)
    positions = list(range(payload_start, signature_start, step))
    positions += list(range(signature_start, len(delta_package)))
    for position in positions:
        damaged = _flip(delta_package, position, 0x01)
        with pytest.raises(PackageError):
            verify_package(damaged, cert)


def test_signature_flip_is_signature_invalid(delta_package, keys):
    _, cert = keys
    damaged = _flip(delta_package, len(delta_package) - 1, 0x01)

    read_package(damaged)  # structurally valid
    with pytest.raises(SignatureInvalid):
        verify_package(damaged, cert)


@PROFILE
@given(data=st.data())
def test_random_truncation_rejected(delta_package, keys, data):
    _, cert = keys
    length = data.draw(st.integers(0, len(delta_package) - 1))
    truncated = delta_package[:length]

    with pytest.raises(PackageError):
        read_package(truncated)
    with pytest.raises(PackageError):
        verify_package(truncated, cert)
    with pytest.raises(PackageError):
        verify_package_stream(io.BytesIO(truncated), cert)


@PROFILE
@given(data=st.data())
def test_random_flips_rejected(delta_package, keys, data):
    _, cert = keys
    damaged = bytearray(delta_package)
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(delta_package) - 1), st.integers(1, 255)),
            min_size=1,
            max_size=4,
            unique_by=lambda flip: flip[0],
        )
    )
    for position, mask in flips:
        damaged[position] ^= mask

    with pytest.raises(PackageError):
        verify_package(bytes(damaged), cert)
    with pytest.raises(PackageError):
        verify_package_stream(io.BytesIO(bytes(damaged)), cert)


@PROFILE
@given(extra=st.binary(min_size=1, max_size=64))
def test_trailing_bytes_rejected(delta_package, keys, extra):
    _, cert = keys
    with pytest.raises(PackageError, match="after the signature"):
        read_package(delta_package + extra)
    with pytest.raises(PackageError, match="after the signature"):
        verify_package_stream(io.BytesIO(delta_package + extra), cert)


def test_other_key_rejected(delta_manifest, delta, keys, tmp_path):
    _, cert = keys
    other_key_path, _ = signing.init_keys(tmp_path)
    other_key = signing.load_private_key(other_key_path)
    package = build_package(delta_manifest, delta, other_key)

    with pytest.raises(SignatureInvalid, match="key id"):
        verify_package(package, cert)


def test_forged_key_id_rejected(delta_manifest, delta, keys):
    key, cert = keys
    other_key = ec.generate_private_key(ec.SECP256R1())
    package = bytearray(build_package(delta_manifest, delta, other_key))
    package[12:20] = signing.public_key_id(key.public_key())

    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_package(bytes(package), cert)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_package_stream(io.BytesIO(bytes(package)), cert)


def test_bad_magic_rejected(delta_package):
    with pytest.raises(PackageError, match="magic"):
        read_package(b"PK\x03\x04" + delta_package[4:])


def test_unsupported_version_rejected(delta_package):
    damaged = delta_package[:8] + (2).to_bytes(2, "big") + delta_package[10:]
    with pytest.raises(PackageError, match="format version 2"):
        read_package(damaged)


def test_oversize_manifest_length_rejected(delta_package):
    length = (MAX_MANIFEST_SIZE + 1).to_bytes(4, "big")
    damaged = delta_package[:20] + length + delta_package[24:]
    with pytest.raises(PackageError, match="manifest length"):
        read_package(damaged)


def test_oversize_payload_length_rejected(delta_package):
    damaged = delta_package[:24] + (2**40).to_bytes(8, "big") + delta_package[32:]
    with pytest.raises(PackageError, match="payload length"):
        read_package(damaged)


def _repack(package: bytes, manifest_bytes: bytes, key) -> bytes:
    """Rebuild ``package`` around another manifest, signed correctly."""
    manifest_end = _manifest_end(package)
    payload = package[manifest_end:-SIGNATURE_SIZE]
    header = (
        package[:20] + len(manifest_bytes).to_bytes(4, "big") + package[24:HEADER_SIZE]
    )
    message = header + manifest_bytes + hashlib.sha256(payload).digest()
    return header + manifest_bytes + payload + signing.sign_raw(key, message)


def test_signed_bad_manifests_rejected(delta_package, keys):
    key, cert = keys
    manifest_bytes = delta_package[HEADER_SIZE : _manifest_end(delta_package)]
    document = json.loads(manifest_bytes)
    compact = {"sort_keys": True, "separators": (",", ":")}

    cases = {
        "whitespace": json.dumps(document, sort_keys=True).encode(),
        "unsorted": json.dumps(
            dict(reversed(document.items())), separators=(",", ":")
        ).encode(),
        "unknown key": json.dumps({**document, "extra": 1}, **compact).encode(),
        "missing key": json.dumps(
            {k: v for k, v in document.items() if k != "model"}, **compact
        ).encode(),
        "float size": manifest_bytes.replace(
            b'"payload_size":', b'"payload_size":1.5,"x":'
        ),
        "duplicate key": manifest_bytes[:-1] + b',"model":"ACME-100"}',
        "not an object": b"[1,2,3]",
        "bad utf-8": b'{"model":"\xff"}',
        "deep nesting": b"[" * 3000 + b"]" * 3000,
        "bool size": json.dumps({**document, "target_size": True}, **compact).encode(),
        "upper-case digest": json.dumps(
            {**document, "target_sha256": U5_SHA256.upper()}, **compact
        ).encode(),
        "bad payload type": json.dumps(
            {**document, "payload_type": "patch"}, **compact
        ).encode(),
        "bad created": json.dumps(
            {**document, "created": "2024-02-30T00:00:00Z"}, **compact
        ).encode(),
        "wrong payload size": json.dumps(
            {**document, "payload_size": document["payload_size"] + 1}, **compact
        ).encode(),
        "wrong payload digest": json.dumps(
            {**document, "payload_sha256": U2_SHA256}, **compact
        ).encode(),
    }
    for case, candidate in cases.items():
        if len(candidate) > MAX_MANIFEST_SIZE:
            candidate = candidate[:MAX_MANIFEST_SIZE]
        package = _repack(delta_package, candidate, key)
        with pytest.raises(PackageError) as excinfo:
            verify_package(package, cert)
        assert not isinstance(excinfo.value, SignatureInvalid), case


# Manifest rules


def test_full_manifest_rejects_source_fields(images):
    _, target = images
    manifest = Manifest.for_full("ACME-100", "1.1", target, CREATED)
    fields = {
        "model": manifest.model,
        "target_version": manifest.target_version,
        "target_sha256": manifest.target_sha256,
        "target_size": manifest.target_size,
        "payload_type": "full",
        "payload_size": manifest.payload_size,
        "payload_sha256": manifest.payload_sha256,
        "created": manifest.created,
    }

    with pytest.raises(PackageError, match="source_sha256"):
        Manifest(**fields, source_sha256=U2_SHA256)
    with pytest.raises(PackageError, match="differs from target_size"):
        Manifest(**{**fields, "payload_size": 1})


def test_delta_manifest_requires_source_fields(delta_manifest):
    with pytest.raises(PackageError, match="source_sha256"):
        Manifest(
            model=delta_manifest.model,
            source_version="1.0",
            source_size=1,
            target_version=delta_manifest.target_version,
            target_sha256=delta_manifest.target_sha256,
            target_size=delta_manifest.target_size,
            payload_type="delta",
            payload_size=delta_manifest.payload_size,
            payload_sha256=delta_manifest.payload_sha256,
            delta_algorithm="bsdiff4",
            created=delta_manifest.created,
        )


def test_manifest_rejects_control_characters(images):
    _, target = images
    with pytest.raises(PackageError, match="control characters"):
        Manifest.for_full("ACME\n100", "1.1", target, CREATED)


def test_build_rejects_payload_mismatch(delta_manifest, keys):
    key, _ = keys
    with pytest.raises(PackageError, match="payload"):
        build_package(delta_manifest, b"not the delta", key)


# apply_package


def test_apply_wrong_source(delta_package, keys, images):
    _, cert = keys
    source, target = images
    manifest, payload = verify_package(delta_package, cert)

    with pytest.raises(SourceMismatch) as excinfo:
        apply_package(manifest, payload, target)
    assert U2_SHA256 in str(excinfo.value)
    assert excinfo.value.fumo_result_code == 403

    altered = _flip(source, len(source) // 2, 0x01)
    with pytest.raises(SourceMismatch):
        apply_package(manifest, payload, altered)


def test_apply_wrong_model(delta_package, keys, images):
    _, cert = keys
    source, _ = images
    manifest, payload = verify_package(delta_package, cert)

    with pytest.raises(SourceMismatch, match="ACME-200"):
        apply_package(manifest, payload, source, device_model="ACME-200")


def test_apply_wrong_target(images, delta, keys):
    key, cert = keys
    source, target = images
    wrong = Manifest.for_delta(
        "ACME-100", "u2", source, "u5", _flip(target, 100, 0x01), delta, CREATED
    )
    package = build_package(wrong, delta, key)
    manifest, payload = verify_package(package, cert)

    with pytest.raises(TargetMismatch) as excinfo:
        apply_package(manifest, payload, source)
    assert excinfo.value.fumo_result_code == 410


def test_apply_corrupt_delta(images, keys):
    key, cert = keys
    source, target = images
    corrupt = bytearray(make_delta(source, target))
    corrupt[40] ^= 0xFF  # inside the bzip2 control block
    manifest = Manifest.for_delta(
        "ACME-100", "u2", source, "u5", target, bytes(corrupt), CREATED
    )
    package = build_package(manifest, bytes(corrupt), key)
    manifest, payload = verify_package(package, cert)

    with pytest.raises(PackageError, match="cannot be applied") as excinfo:
        apply_package(manifest, payload, source)
    assert type(excinfo.value) is PackageError


def test_error_fumo_result_codes():
    assert PackageError.fumo_result_code == 402
    assert SignatureInvalid.fumo_result_code == 404
    assert SourceMismatch.fumo_result_code == 403
    assert TargetMismatch.fumo_result_code == 410
    assert issubclass(SignatureInvalid, PackageError)
    assert issubclass(PackageError, ValueError)
