"""bsdiff4 deltas between firmware images, built in a process pool.

This module owns delta creation and application: ``make_delta`` diffs two
images and proves the result by patching it back, ``apply_delta`` patches
with every bsdiff4 failure turned into ``DeltaError``, and ``build_deltas``
runs many diff jobs in worker processes. It does not depend on packages,
signatures or storage.

Diffing takes seconds to minutes for multi-megabyte images: bsdiff4 1.3.2
took 1.8 s for the 4.7 MB libcrypto.so.3 pair 3.0.17 -> 3.0.20 on a
2-core AMD EPYC virtual machine. That is why ``build_deltas`` runs it in
worker processes and never on a reactor thread. Jobs name files rather
than carry bytes, so only paths and small results cross the process
boundary.

The bsdiff4 patch format, as written by the ``bsdiff4`` package: the magic
``BSDIFF40``, three 8-byte integers (length of the compressed control
block, length of the compressed diff block, size of the new file), then
the control, diff and extra blocks, each compressed with bzip2. The
integers are little-endian sign-magnitude: the top bit of the last byte is
the sign.

Example::

    delta = make_delta(old_image, new_image)
    assert apply_delta(old_image, delta) == new_image
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import multiprocessing
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bsdiff4

logger = logging.getLogger(__name__)

DELTA_ALGORITHM = "bsdiff4"
BSDIFF4_MAGIC = b"BSDIFF40"
BSDIFF4_HEADER_SIZE = 32

# Worker processes are started with "spawn": forking a server process that
# runs database and reactor threads can copy a lock held by another thread
# and deadlock the child.
MP_START_METHOD = "spawn"


class DeltaError(Exception):
    """A delta could not be built, verified or applied."""


@dataclass(frozen=True)
class DeltaHeader:
    """The fixed 32-byte header of a bsdiff4 patch."""

    control_length: int
    diff_length: int
    new_size: int


@dataclass(frozen=True)
class DeltaJob:
    """One delta to build: read two image files, write the delta file."""

    source_path: Path
    target_path: Path
    output_path: Path


@dataclass(frozen=True)
class DeltaResult:
    """Sizes (bytes), SHA-256 hex digests and diff time of a built delta."""

    job: DeltaJob
    source_size: int
    target_size: int
    delta_size: int
    source_sha256: str
    target_sha256: str
    delta_sha256: str
    seconds: float


ProgressCallback = Callable[[int, int, DeltaResult], None]


def _decode_offtin(raw: bytes) -> int:
    magnitude = int.from_bytes(raw[:7] + bytes([raw[7] & 0x7F]), "little")
    return -magnitude if raw[7] & 0x80 else magnitude


def read_delta_header(delta: bytes) -> DeltaHeader:
    """Parse and check the header of a bsdiff4 patch.

    Lets a caller refuse a patch whose declared output size is wrong before
    bsdiff4 allocates that much memory.

    Raises:
        DeltaError: the patch is shorter than the header, has the wrong
            magic, a negative length, or blocks longer than the patch.
    """
    if len(delta) < BSDIFF4_HEADER_SIZE:
        raise DeltaError(
            f"delta is {len(delta)} bytes, shorter than the "
            f"{BSDIFF4_HEADER_SIZE}-byte bsdiff4 header"
        )
    if delta[:8] != BSDIFF4_MAGIC:
        raise DeltaError(
            f"delta does not start with the bsdiff4 magic {BSDIFF4_MAGIC!r}: "
            f"found {delta[:8]!r}"
        )
    header = DeltaHeader(
        control_length=_decode_offtin(delta[8:16]),
        diff_length=_decode_offtin(delta[16:24]),
        new_size=_decode_offtin(delta[24:32]),
    )
    if min(header.control_length, header.diff_length, header.new_size) < 0:
        raise DeltaError(f"delta header has a negative length: {header}")
    blocks = header.control_length + header.diff_length
    if BSDIFF4_HEADER_SIZE + blocks > len(delta):
        raise DeltaError(
            f"delta header declares {blocks} bytes of control and diff "
            f"blocks, but only {len(delta) - BSDIFF4_HEADER_SIZE} bytes follow"
        )
    return header


def apply_delta(source: bytes, delta: bytes, expected_size: int | None = None) -> bytes:
    """Patch ``source`` with a bsdiff4 ``delta`` and return the new image.

    Args:
        source: the image the delta was made from.
        delta: a bsdiff4 patch.
        expected_size: if given, the header's new size must equal it; this
            is checked before any block is decompressed.

    Raises:
        DeltaError: the header is invalid, declares another size, or
            bsdiff4 fails on the blocks (bad bzip2 data, control entries
            outside the images, truncation).
    """
    header = read_delta_header(delta)
    if expected_size is not None and header.new_size != expected_size:
        raise DeltaError(
            f"delta produces {header.new_size} bytes, expected {expected_size}"
        )
    try:
        result = bsdiff4.patch(source, delta)
    except (ValueError, OSError, EOFError) as exc:
        # bz2 raises OSError or EOFError for damaged blocks, bsdiff4 raises
        # ValueError for truncation and control entries out of range.
        raise DeltaError(f"bsdiff4 could not apply the delta: {exc}") from exc
    if len(result) != header.new_size:
        raise DeltaError(
            f"bsdiff4 produced {len(result)} bytes, the delta header "
            f"declares {header.new_size}"
        )
    return result


def make_delta(source: bytes, target: bytes) -> bytes:
    """Return a bsdiff4 delta from ``source`` to ``target``, verified.

    The delta is applied to ``source`` again and must reproduce ``target``
    byte for byte before it is returned, so a bsdiff4 defect cannot reach a
    device.

    Raises:
        DeltaError: patching the new delta does not reproduce ``target``.
    """
    delta = bsdiff4.diff(source, target)
    try:
        rebuilt = apply_delta(source, delta, expected_size=len(target))
    except DeltaError as exc:
        raise DeltaError(f"the new delta does not apply to its source: {exc}") from exc
    if rebuilt != target:
        raise DeltaError(
            "the new delta does not reproduce the target image "
            f"(SHA-256 {hashlib.sha256(rebuilt).hexdigest()} instead of "
            f"{hashlib.sha256(target).hexdigest()})"
        )
    return delta


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def run_delta_job(job: DeltaJob) -> DeltaResult:
    """Build one delta file; the function each worker process runs.

    The output appears under its final name only once it is complete and
    verified, so a reader never sees a partial delta.
    """
    source = Path(job.source_path).read_bytes()
    target = Path(job.target_path).read_bytes()
    started = time.perf_counter()
    delta = make_delta(source, target)
    seconds = time.perf_counter() - started
    _write_atomically(Path(job.output_path), delta)
    return DeltaResult(
        job=job,
        source_size=len(source),
        target_size=len(target),
        delta_size=len(delta),
        source_sha256=hashlib.sha256(source).hexdigest(),
        target_sha256=hashlib.sha256(target).hexdigest(),
        delta_sha256=hashlib.sha256(delta).hexdigest(),
        seconds=seconds,
    )


def build_deltas(
    jobs: Sequence[DeltaJob],
    max_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[DeltaResult]:
    """Build every delta in ``jobs`` in a pool of worker processes.

    Args:
        jobs: the deltas to build. Each output path must be distinct.
        max_workers: worker processes; ``None`` uses ``os.cpu_count()``.
            Never more than the number of jobs.
        progress: called in the calling process as ``progress(done, total,
            result)`` each time a job finishes, in completion order.

    Returns:
        One result per job, in the order of ``jobs``.

    Raises:
        DeltaError: a job failed (unreadable input, write error, failed
            verification). Jobs not yet started are cancelled; deltas that
            were already written stay in place, complete and verified.
        ValueError: two jobs share an output path, or ``max_workers`` < 1.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    outputs = [Path(job.output_path).resolve() for job in jobs]
    if len(set(outputs)) != len(outputs):
        raise ValueError("two delta jobs write the same output path")
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, got {max_workers}")
    workers = min(max_workers or os.cpu_count() or 1, len(jobs))

    results: list[DeltaResult | None] = [None] * len(jobs)
    context = multiprocessing.get_context(MP_START_METHOD)
    logger.info("building %d deltas with %d worker processes", len(jobs), workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {
            pool.submit(run_delta_job, job): index for index, job in enumerate(jobs)
        }
        try:
            done = 0
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                try:
                    result = future.result()
                except Exception as exc:
                    raise DeltaError(
                        f"delta job {jobs[index].source_path} -> "
                        f"{jobs[index].target_path} failed: {exc}"
                    ) from exc
                results[index] = result
                done += 1
                logger.debug(
                    "delta %s: %d bytes in %.2f s (%d of %d)",
                    result.job.output_path,
                    result.delta_size,
                    result.seconds,
                    done,
                    len(jobs),
                )
                if progress is not None:
                    progress(done, len(jobs), result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [result for result in results if result is not None]
