"""Benchmark dmserver's delta builds against xdelta3 and zstd.

For each pair of consecutive firmware images in the corpus this measures:

- ``dmserver.fota.delta.make_delta`` (bsdiff4 diff, then a verifying
  patch): wall time, peak RSS and delta size, plus the time of
  ``apply_delta`` alone and the size a signed package adds to the delta;
- ``xdelta3 -9 -e -s`` and ``zstd --ultra -22 --long=27 --patch-from``:
  wall time, peak RSS and size of the encode, and the decode time.

Every build runs in a child process that is reaped with ``os.wait4``, so
each peak RSS belongs to one build. Every delta is decoded and compared
with the target image; a mismatch stops the run. Results print as
markdown tables.

Example::

    .venv/bin/python -m tools.bench.deltas --pairs libexpat,libcrypto-17-20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import DEFAULT_CORPUS, MIB, ROOT, BenchError, print_machine, run_measured

# name: (source image, target image) in the corpus directory.
PAIRS: dict[str, tuple[str, str]] = {
    "libexpat": ("libexpat-2.5.0-1+deb12u2.so", "libexpat-2.5.0-1+deb12u5.so"),
    "libcrypto-17-20": ("libcrypto-3.0.17.so", "libcrypto-3.0.20.so"),
    "libcrypto-20-22": ("libcrypto-3.0.20.so", "libcrypto-3.0.22.so"),
    "ovmf": (
        "OVMF_CODE_4M-2022.11-6+deb12u1.fd",
        "OVMF_CODE_4M-2022.11-6+deb12u2.fd",
    ),
}
CHECKSUM_FILE = "SHA256SUMS"
XDELTA3_ENCODE = ["xdelta3", "-9", "-e", "-f", "-s"]
ZSTD_ENCODE = ["zstd", "-q", "-f", "--ultra", "-22", "--long=27"]
ZSTD_DECODE = ["zstd", "-q", "-f", "-d", "--long=27"]
# Model and version strings of the signed package built for the overhead
# figure; their lengths change the manifest size by a few bytes.
PACKAGE_MODEL = "FP-100"
PACKAGE_SOURCE_VERSION = "source"
PACKAGE_TARGET_VERSION = "target"


@dataclass
class Measurement:
    """One delta build by one tool."""

    pair: str
    tool: str
    target_size: int
    delta_size: int
    build_seconds: float
    build_max_rss_kib: int
    apply_seconds: float
    # dmserver only: RSS of the child before diffing (interpreter, imports
    # and both images) and the signed package built from the delta.
    baseline_rss_kib: int | None = None
    package_size: int | None = None
    manifest_size: int | None = None


# ---------------------------------------------------------------------------
# The child process that builds one dmserver delta


def child_main(source_path: Path, target_path: Path) -> int:
    """Build, apply and package one delta; print the figures as JSON."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from dmserver.fota import package
    from dmserver.fota.delta import apply_delta, make_delta

    source = source_path.read_bytes()
    target = target_path.read_bytes()
    key = ec.generate_private_key(ec.SECP256R1())
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    started = time.perf_counter()
    delta = make_delta(source, target)
    build_seconds = time.perf_counter() - started

    started = time.perf_counter()
    rebuilt = apply_delta(source, delta, expected_size=len(target))
    apply_seconds = time.perf_counter() - started
    if rebuilt != target:
        raise SystemExit("apply_delta did not reproduce the target image")

    manifest = package.Manifest.for_delta(
        PACKAGE_MODEL,
        PACKAGE_SOURCE_VERSION,
        source,
        PACKAGE_TARGET_VERSION,
        target,
        delta,
    )
    signed = package.build_package(manifest, delta, key)
    json.dump(
        {
            "delta_size": len(delta),
            "build_seconds": build_seconds,
            "apply_seconds": apply_seconds,
            "baseline_rss_kib": baseline_kib,
            "package_size": len(signed),
            "manifest_size": len(manifest.to_json()),
        },
        sys.stdout,
    )
    return 0


# ---------------------------------------------------------------------------
# Measuring each tool


def _checked(run, what: str):
    if run.returncode != 0:
        raise BenchError(
            f"{what} exited with {run.returncode}: "
            f"{run.stderr.decode(errors='replace').strip()}"
        )
    return run


def measure_dmserver(name: str, source: Path, target: Path) -> Measurement:
    command = [
        sys.executable,
        "-m",
        "tools.bench.deltas",
        "--child",
        str(source),
        str(target),
    ]
    run = _checked(run_measured(command, cwd=ROOT), f"dmserver delta child for {name}")
    figures = json.loads(run.stdout)
    return Measurement(
        pair=name,
        tool="dmserver make_delta (bsdiff4)",
        target_size=target.stat().st_size,
        delta_size=figures["delta_size"],
        build_seconds=figures["build_seconds"],
        build_max_rss_kib=run.max_rss_kib,
        apply_seconds=figures["apply_seconds"],
        baseline_rss_kib=figures["baseline_rss_kib"],
        package_size=figures["package_size"],
        manifest_size=figures["manifest_size"],
    )


def _same_file(first: Path, second: Path) -> bool:
    return first.read_bytes() == second.read_bytes()


def measure_xdelta3(name: str, source: Path, target: Path, work: Path) -> Measurement:
    delta = work / f"{name}.xdelta3"
    restored = work / f"{name}.xdelta3.out"
    encode = _checked(
        run_measured(XDELTA3_ENCODE + [str(source), str(target), str(delta)]),
        "xdelta3 encode",
    )
    decode = _checked(
        run_measured(
            ["xdelta3", "-d", "-f", "-s", str(source), str(delta), str(restored)]
        ),
        "xdelta3 decode",
    )
    if not _same_file(restored, target):
        raise BenchError(f"xdelta3 did not reproduce {target.name}")
    return Measurement(
        pair=name,
        tool="xdelta3 -9",
        target_size=target.stat().st_size,
        delta_size=delta.stat().st_size,
        build_seconds=encode.seconds,
        build_max_rss_kib=encode.max_rss_kib,
        apply_seconds=decode.seconds,
    )


def measure_zstd(name: str, source: Path, target: Path, work: Path) -> Measurement:
    delta = work / f"{name}.zst"
    restored = work / f"{name}.zst.out"
    encode = _checked(
        run_measured(
            ZSTD_ENCODE + [f"--patch-from={source}", str(target), "-o", str(delta)]
        ),
        "zstd encode",
    )
    decode = _checked(
        run_measured(
            ZSTD_DECODE + [f"--patch-from={source}", str(delta), "-o", str(restored)]
        ),
        "zstd decode",
    )
    if not _same_file(restored, target):
        raise BenchError(f"zstd did not reproduce {target.name}")
    return Measurement(
        pair=name,
        tool="zstd -22 --long=27",
        target_size=target.stat().st_size,
        delta_size=delta.stat().st_size,
        build_seconds=encode.seconds,
        build_max_rss_kib=encode.max_rss_kib,
        apply_seconds=decode.seconds,
    )


def median_of(runs: list[Measurement]) -> Measurement:
    """Combine repeated runs: median times, maximum RSS, sizes of the first."""
    first = runs[0]
    return Measurement(
        **{
            **asdict(first),
            "build_seconds": statistics.median(r.build_seconds for r in runs),
            "apply_seconds": statistics.median(r.apply_seconds for r in runs),
            "build_max_rss_kib": max(r.build_max_rss_kib for r in runs),
        }
    )


# ---------------------------------------------------------------------------
# Inputs and output


def check_corpus(corpus: Path, names: list[str]) -> None:
    """Check that the images exist and match the corpus's SHA256SUMS.

    Raises:
        BenchError: the directory or an image is missing, or a checksum
            differs.
    """
    if not corpus.is_dir():
        raise BenchError(
            f"firmware corpus directory {corpus} not found; pass --corpus DIR "
            "naming the directory with the libexpat, libcrypto and OVMF images"
        )
    sums: dict[str, str] = {}
    sums_path = corpus / CHECKSUM_FILE
    if sums_path.is_file():
        for line in sums_path.read_text().splitlines():
            digest, _, filename = line.partition("  ")
            sums[filename.strip()] = digest.strip()
    for name in names:
        for filename in PAIRS[name]:
            path = corpus / filename
            if not path.is_file():
                raise BenchError(
                    f"image {filename} not found in {corpus}; pass --corpus DIR "
                    "naming the firmware corpus directory"
                )
            expected = sums.get(filename)
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
            if expected is not None and actual != expected:
                raise BenchError(
                    f"{path} has SHA-256 {actual}, {CHECKSUM_FILE} lists {expected}"
                )


def tool_versions() -> list[str]:
    lines = []
    for command in (["xdelta3", "-V"], ["zstd", "-V"]):
        result = subprocess.run(command, capture_output=True, text=True)
        output = (result.stdout + result.stderr).strip().splitlines()
        lines.append(output[0] if output else f"{command[0]}: no version output")
    return lines


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib * 1024 / MIB:.0f}"


def print_tables(results: list[Measurement], repeat: int) -> None:
    timing = "median of " + str(repeat) if repeat > 1 else "one run"
    print(f"Delta builds ({timing}; peak RSS is the maximum over runs)\n")
    print(
        "| pair | tool | new image bytes | delta bytes | % of new | build s "
        "| build peak RSS MiB | apply s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.pair} | {r.tool} | {r.target_size:,} | {r.delta_size:,} "
            f"| {100 * r.delta_size / r.target_size:.1f} | {r.build_seconds:.2f} "
            f"| {_mib(r.build_max_rss_kib)} | {r.apply_seconds:.3f} |"
        )
    print("\nSigned delta packages (dmserver.fota.package.build_package)\n")
    print(
        "| pair | delta bytes | package bytes | overhead bytes | of which manifest "
        "| child RSS before diff MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        if r.package_size is None:
            continue
        print(
            f"| {r.pair} | {r.delta_size:,} | {r.package_size:,} "
            f"| {r.package_size - r.delta_size:,} | {r.manifest_size:,} "
            f"| {_mib(r.baseline_rss_kib)} |"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure dmserver delta builds against xdelta3 and zstd."
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="directory with the firmware corpus images (default: %(default)s)",
    )
    parser.add_argument(
        "--pairs",
        default=",".join(PAIRS),
        help="comma-separated pairs to measure, from "
        f"{', '.join(PAIRS)} (default: all; ovmf takes about 16 s per run)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per pair and tool (default: 1)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--child",
        nargs=2,
        type=Path,
        metavar=("SOURCE", "TARGET"),
        help=argparse.SUPPRESS,
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(*args.child)
    names = [name.strip() for name in args.pairs.split(",") if name.strip()]
    unknown = [name for name in names if name not in PAIRS]
    if unknown:
        print(
            f"deltas: unknown pair(s) {', '.join(unknown)}; "
            f"choose from {', '.join(PAIRS)}",
            file=sys.stderr,
        )
        return 2
    if args.repeat < 1:
        print("deltas: --repeat must be at least 1", file=sys.stderr)
        return 2
    missing = [tool for tool in ("xdelta3", "zstd") if shutil.which(tool) is None]
    try:
        if missing:
            raise BenchError(
                f"{', '.join(missing)} not found; install the Debian packages "
                "xdelta3 and zstd (tools/install-system-deps)"
            )
        corpus = args.corpus.resolve()
        check_corpus(corpus, names)
        print_machine()
        for line in tool_versions():
            print(f"- {line}")
        print(f"- corpus: {corpus}\n")
        results = []
        with tempfile.TemporaryDirectory(prefix="dmserver-bench-deltas-") as work:
            for name in names:
                source, target = (corpus / filename for filename in PAIRS[name])
                for measure in (
                    lambda: measure_dmserver(name, source, target),
                    lambda: measure_xdelta3(name, source, target, Path(work)),
                    lambda: measure_zstd(name, source, target, Path(work)),
                ):
                    runs = [measure() for _ in range(args.repeat)]
                    results.append(median_of(runs))
                    print(
                        f"measured {name}: {results[-1].tool}, "
                        f"{results[-1].delta_size:,} bytes",
                        file=sys.stderr,
                    )
    except BenchError as error:
        print(f"deltas: error: {error}", file=sys.stderr)
        return 1
    print_tables(results, args.repeat)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
