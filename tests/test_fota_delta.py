"""Tests for dmserver.fota.delta on the real libexpat firmware pair.

Expected digests and sizes are the published values listed in
fixtures/firmware/PROVENANCE.md, not values computed from the fixture files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import bsdiff4
import pytest

from dmserver.fota import delta as delta_module
from dmserver.fota.delta import (
    DeltaError,
    DeltaJob,
    DeltaResult,
    apply_delta,
    build_deltas,
    make_delta,
    read_delta_header,
)

FIRMWARE = Path(__file__).resolve().parent.parent / "fixtures" / "firmware"
U2_PATH = FIRMWARE / "libexpat-2.5.0-1+deb12u2.so"
U5_PATH = FIRMWARE / "libexpat-2.5.0-1+deb12u5.so"
U2_SHA256 = "a9a60cb5308ca1054427e2973b021ea63c2c801c71d8c0dc9d33218fee1d976a"
U5_SHA256 = "b342d94f6a71df596f19b1b0d4d3af9b883f0333027de6c3fc0dbc9ff8c45057"
U2_SIZE = 174_184
U5_SIZE = 186_472


@pytest.fixture(scope="module")
def images() -> tuple[bytes, bytes]:
    return U2_PATH.read_bytes(), U5_PATH.read_bytes()


@pytest.fixture(scope="module")
def delta(images) -> bytes:
    source, target = images
    return make_delta(source, target)


def test_make_delta_reproduces_target(images, delta):
    source, _ = images

    rebuilt = bsdiff4.patch(source, delta)

    assert hashlib.sha256(rebuilt).hexdigest() == U5_SHA256
    # bsdiff4 1.3.2 produces 31,976 bytes; any version should stay far
    # below the 186,472-byte target.
    assert len(delta) < U5_SIZE // 4


def test_apply_delta_reproduces_target(images, delta):
    source, _ = images

    rebuilt = apply_delta(source, delta, expected_size=U5_SIZE)

    assert hashlib.sha256(rebuilt).hexdigest() == U5_SHA256


def test_reverse_delta_reproduces_source(images):
    source, target = images

    reverse = make_delta(target, source)

    assert hashlib.sha256(apply_delta(target, reverse)).hexdigest() == U2_SHA256


def test_read_delta_header(delta):
    header = read_delta_header(delta)

    assert delta[:8] == b"BSDIFF40"
    assert header.new_size == U5_SIZE
    assert header.control_length > 0
    assert header.diff_length > 0
    assert 32 + header.control_length + header.diff_length < len(delta)


def test_read_delta_header_decodes_sign_magnitude():
    # Header fields are little-endian with the sign in the top bit of the
    # last byte (the original bsdiff "offtin" encoding).
    raw = (
        b"BSDIFF40"
        + (5).to_bytes(8, "little")
        + (6).to_bytes(8, "little")
        + (0x0102030405).to_bytes(8, "little")
        + b"\0" * 11
    )
    header = read_delta_header(raw)
    assert (header.control_length, header.diff_length, header.new_size) == (
        5,
        6,
        0x0102030405,
    )

    negative = raw[:15] + bytes([raw[15] | 0x80]) + raw[16:]
    with pytest.raises(DeltaError, match="negative"):
        read_delta_header(negative)


def test_corrupted_delta_raises_delta_error(images, delta):
    source, _ = images
    header = read_delta_header(delta)
    # A byte inside the bzip2-compressed diff block.
    position = 32 + header.control_length + header.diff_length // 2
    corrupted = bytearray(delta)
    corrupted[position] ^= 0xFF
    corrupted = bytes(corrupted)

    with pytest.raises((ValueError, OSError, EOFError)):
        bsdiff4.patch(source, corrupted)
    with pytest.raises(DeltaError, match="bsdiff4 could not apply"):
        apply_delta(source, corrupted)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[:20], "shorter than"),
        (lambda d: b"BSDIFF41" + d[8:], "magic"),
        (lambda d: d[:32] + d[33:200], "only"),
        (lambda d: d[:-10], "bsdiff4 could not apply"),
    ],
    ids=["short header", "bad magic", "truncated blocks", "truncated extra"],
)
def test_malformed_delta_raises_delta_error(images, delta, damage, message):
    source, _ = images
    with pytest.raises(DeltaError, match=message):
        apply_delta(source, damage(delta))


def test_apply_delta_rejects_wrong_expected_size(images, delta):
    source, _ = images
    with pytest.raises(DeltaError, match="expected 100"):
        apply_delta(source, delta, expected_size=100)


def test_make_delta_detects_bad_patch(images, monkeypatch):
    source, target = images
    wrong = target[:-1] + bytes([target[-1] ^ 0x01])
    monkeypatch.setattr(delta_module.bsdiff4, "patch", lambda old, patch: wrong)

    with pytest.raises(DeltaError, match="does not reproduce"):
        make_delta(source, target)


def test_build_deltas_two_workers(tmp_path):
    jobs = [
        DeltaJob(U2_PATH, U5_PATH, tmp_path / "out" / "u2-u5.bsdiff4"),
        DeltaJob(U5_PATH, U2_PATH, tmp_path / "out" / "u5-u2.bsdiff4"),
    ]
    calls: list[tuple[int, int, DeltaResult]] = []

    results = build_deltas(
        jobs,
        max_workers=2,
        progress=lambda done, total, result: calls.append((done, total, result)),
    )

    assert [result.job for result in results] == jobs
    assert [(done, total) for done, total, _ in calls] == [(1, 2), (2, 2)]
    assert {result.job for _, _, result in calls} == set(jobs)

    forward, reverse = results
    assert forward.source_sha256 == U2_SHA256
    assert forward.target_sha256 == U5_SHA256
    assert (forward.source_size, forward.target_size) == (U2_SIZE, U5_SIZE)
    assert reverse.source_sha256 == U5_SHA256
    assert reverse.target_sha256 == U2_SHA256
    assert forward.seconds >= 0

    u2, u5 = U2_PATH.read_bytes(), U5_PATH.read_bytes()
    forward_delta = jobs[0].output_path.read_bytes()
    reverse_delta = jobs[1].output_path.read_bytes()
    assert len(forward_delta) == forward.delta_size
    assert hashlib.sha256(forward_delta).hexdigest() == forward.delta_sha256
    assert hashlib.sha256(bsdiff4.patch(u2, forward_delta)).hexdigest() == U5_SHA256
    assert hashlib.sha256(bsdiff4.patch(u5, reverse_delta)).hexdigest() == U2_SHA256
    leftovers = [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_build_deltas_missing_input(tmp_path):
    jobs = [DeltaJob(tmp_path / "absent.bin", U5_PATH, tmp_path / "out.bsdiff4")]

    with pytest.raises(DeltaError, match="absent.bin"):
        build_deltas(jobs, max_workers=1)
    assert not (tmp_path / "out.bsdiff4").exists()


def test_build_deltas_rejects_duplicate_outputs(tmp_path):
    output = tmp_path / "same.bsdiff4"
    jobs = [DeltaJob(U2_PATH, U5_PATH, output), DeltaJob(U5_PATH, U2_PATH, output)]

    with pytest.raises(ValueError, match="same output"):
        build_deltas(jobs)


def test_build_deltas_empty():
    assert build_deltas([]) == []


def test_build_deltas_rejects_zero_workers(tmp_path):
    with pytest.raises(ValueError, match="max_workers"):
        build_deltas([DeltaJob(U2_PATH, U5_PATH, tmp_path / "d")], max_workers=0)
