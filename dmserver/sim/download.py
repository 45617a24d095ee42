"""FUMO work after a session: download descriptor, resumable download, update.

This module owns what the phone does between the session that accepted an
Exec on a FUMO node and the session that reports the result:

- fetch the OMA DL download descriptor at PkgURL and check free storage
  and battery;
- download objectURI with HTTP Range resume (``Range: bytes=N-`` with
  ``If-Range`` naming the ETag), keeping the partial file on disk so that a
  restarted simulator resumes too;
- verify the package signature with the provisioned certificate, check the
  source image, patch, check the target and swap the image atomically;
- POST the install notify to installNotifyURI and leave a FUMO result for
  the next session's Generic Alert.

Every failure ends in a FUMO result code (FUMO 1.0 result code table) and,
when the descriptor names an installNotifyURI, an OMA DL 1.0 install status.
Code 450 is in the vendor-specified client error range 450-499; this
simulator uses it for "battery too low to start the update".

Fault injection (:class:`UpdateOptions`) exercises each failure path with
real packages: a flipped payload byte (402), a flipped image byte (403), a
flipped signature byte (404), and a connection closed once mid-download
(resumed, then 200).

Example::

    report = perform_fumo_job(phone, phone.pending_job, UpdateOptions())
    report.result_code        # 200 when the phone now runs the target
"""

from __future__ import annotations

import http.client
import logging
import ssl
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urljoin, urlsplit

from ..fota import descriptor as dd
from ..fota import package as pkg
from ..fota.signing import SigningKeyError, load_certificate
from ..mo import fumo
from .phone import DownloadRecord, FumoJob, FumoReport, Phone

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 30.0
MAX_REDIRECTS = 5
# A connection that breaks mid-download is resumed this many times in total.
MAX_DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_CHUNK_SIZE = 16 * 1024
DEFAULT_MIN_BATTERY = 20  # percent

# FUMO result codes (FUMO 1.0 result code table).
RESULT_SUCCESS = 200
RESULT_CLIENT_ERROR = 400
RESULT_CORRUPTED_PACKAGE = 402
RESULT_DEVICE_MISMATCH = 403
RESULT_VALIDATION_FAILED = 404
RESULT_NOT_ACCEPTABLE = 405
RESULT_DOWNLOAD_AUTH_FAILED = 406
RESULT_DOWNLOAD_TIMEOUT = 407
RESULT_UPDATE_FAILED = 410
RESULT_BAD_URL = 411
RESULT_SERVER_UNAVAILABLE = 412
RESULT_SERVER_ERROR = 500
RESULT_DOWNLOAD_OUT_OF_MEMORY = 501
RESULT_UPDATE_OUT_OF_MEMORY = 502
RESULT_NETWORK_FAILURE = 503
# Vendor-specified client error (range 450-499): battery below the minimum
# charge for an update, so the phone does not start.
RESULT_BATTERY_TOO_LOW = 450

# OMA DL 1.0 install status reported for each FUMO result code. 402 and 404
# both mean the object is not what the descriptor announced (905).
INSTALL_STATUS_FOR_RESULT = {
    RESULT_SUCCESS: 900,
    RESULT_DOWNLOAD_OUT_OF_MEMORY: 901,
    RESULT_UPDATE_OUT_OF_MEMORY: 901,
    401: 902,
    RESULT_NETWORK_FAILURE: 903,
    RESULT_DOWNLOAD_TIMEOUT: 903,
    RESULT_CORRUPTED_PACKAGE: 905,
    RESULT_VALIDATION_FAILED: 905,
    RESULT_DEVICE_MISMATCH: 953,
    RESULT_NOT_ACCEPTABLE: 953,
    RESULT_BAD_URL: 954,
    RESULT_SERVER_UNAVAILABLE: 954,
    RESULT_SERVER_ERROR: 954,
    RESULT_DOWNLOAD_AUTH_FAILED: 954,
}
INSTALL_STATUS_DEVICE_ABORTED = 952


def install_status_for(result_code: int) -> int:
    """Return the OMA DL install status that matches a FUMO result code."""
    return INSTALL_STATUS_FOR_RESULT.get(result_code, INSTALL_STATUS_DEVICE_ABORTED)


class FumoFailure(Exception):
    """A FUMO operation failed; ``result_code`` is what the phone reports.

    ``update_stage`` is true when the failure happened after the download
    was complete, so the FUMO State becomes 80 rather than 20.
    """

    def __init__(self, result_code: int, message: str, update_stage: bool = False):
        super().__init__(message)
        self.result_code = result_code
        self.update_stage = update_stage


@dataclass
class UpdateOptions:
    """Conditions and injected faults for FUMO work.

    ``drop_after`` closes the download connection once, after that many
    bytes of the package, and lets the resume logic finish the download.
    """

    min_battery: int = DEFAULT_MIN_BATTERY
    corrupt_download: bool = False
    modify_firmware: bool = False
    bad_signature: bool = False
    drop_after: int | None = None
    timeout: float = HTTP_TIMEOUT_SECONDS


# ---------------------------------------------------------------------------
# HTTP


class HttpError(OSError):
    """The HTTP exchange itself failed (connection, TLS, protocol)."""


def open_http(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = HTTP_TIMEOUT_SECONDS,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send one request and return the connection and the unread response.

    The caller reads the body and closes the connection. Redirects (301,
    302, 303, 307, 308) are followed up to MAX_REDIRECTS times.

    Raises:
        ValueError: the URL is not http or https.
        HttpError: connecting, sending or reading the status line failed.
    """
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http or https URL: {url!r}")
        if parts.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname,
                parts.port,
                timeout=timeout,
                context=ssl.create_default_context(),
            )
        else:
            connection = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=timeout
            )
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            connection.request(method, target, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise HttpError(f"{method} {url} failed: {error}") from error
        location = response.getheader("Location")
        if response.status in (301, 302, 303, 307, 308) and location:
            response.read()
            connection.close()
            url = urljoin(url, location)
            if response.status == 303:
                method, body = "GET", None
            continue
        return connection, response
    raise HttpError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")


def _read_limited(
    response: http.client.HTTPResponse, limit: int, description: str
) -> bytes:
    data = response.read(limit + 1)
    if len(data) > limit:
        raise FumoFailure(
            RESULT_SERVER_ERROR,
            f"{description} is larger than the limit of {limit} bytes",
        )
    return data


def _result_for_http_status(status: int) -> int:
    if status in (401, 403, 407):
        return RESULT_DOWNLOAD_AUTH_FAILED
    if status in (404, 410, 414):
        return RESULT_BAD_URL
    if status == 408:
        return RESULT_DOWNLOAD_TIMEOUT
    if status in (502, 503, 504):
        return RESULT_SERVER_UNAVAILABLE
    return RESULT_SERVER_ERROR


# ---------------------------------------------------------------------------
# Download descriptor


def fetch_descriptor(
    url: str, timeout: float = HTTP_TIMEOUT_SECONDS
) -> tuple[dd.DownloadDescriptor | None, bytes | None]:
    """GET PkgURL and return its download descriptor, or the body itself.

    FUMO also allows PkgURL to point at the package. So a PkgURL that
    serves anything other than application/vnd.oma.dd+xml is taken to be
    the package, and its body is returned as the second element.

    Raises:
        FumoFailure: 411 for an invalid URL, 412 when the server cannot be
            reached, the code matching an HTTP error status, and the code
            matching the install status of an invalid descriptor.
    """
    logger.info("fetching PkgURL %s", url)
    try:
        connection, response = open_http(
            "GET", url, {"Accept": f"{dd.DD_MEDIA_TYPE}, */*"}, timeout=timeout
        )
    except ValueError as error:
        raise FumoFailure(RESULT_BAD_URL, f"invalid PkgURL: {error}") from None
    except HttpError as error:
        raise FumoFailure(RESULT_SERVER_UNAVAILABLE, str(error)) from None
    try:
        if response.status != 200:
            raise FumoFailure(
                _result_for_http_status(response.status),
                f"GET {url} returned HTTP {response.status} {response.reason}",
            )
        media_type = (response.getheader("Content-Type") or "").split(";")[0].strip()
        if media_type.lower() != dd.DD_MEDIA_TYPE:
            logger.info(
                "PkgURL served %s, not a download descriptor; using the body as "
                "the package",
                media_type or "no Content-Type",
            )
            body = _read_limited(response, pkg.MAX_PAYLOAD_SIZE, "package")
            return None, body
        body = _read_limited(response, dd.MAX_DESCRIPTOR_SIZE, "download descriptor")
    except (OSError, http.client.HTTPException) as error:
        raise FumoFailure(
            RESULT_NETWORK_FAILURE, f"reading {url} failed: {error}"
        ) from None
    finally:
        connection.close()

    try:
        descriptor = dd.parse_descriptor(body)
    except dd.DescriptorError as error:
        code = fumo.install_status_to_fumo(error.install_status)
        raise FumoFailure(code, f"invalid download descriptor: {error}") from None
    logger.info(
        "download descriptor: objectURI %s, %d bytes, type %s, installNotifyURI %s",
        descriptor.object_uri,
        descriptor.size,
        descriptor.type,
        descriptor.install_notify_uri or "none",
    )
    return descriptor, None


def post_install_notify(
    url: str, status: int, timeout: float = HTTP_TIMEOUT_SECONDS
) -> int | None:
    """POST the install notify for ``status``; return the HTTP status or None.

    A failed notify is logged and not raised: the Generic Alert still
    carries the result to the DM server.
    """
    body = dd.build_install_notify(status)
    try:
        connection, response = open_http(
            "POST", url, {"Content-Type": "text/plain"}, body, timeout=timeout
        )
    except (ValueError, HttpError) as error:
        logger.warning("install notify %s to %s failed: %s", status, url, error)
        return None
    try:
        response.read()
    except (OSError, http.client.HTTPException):
        pass
    finally:
        connection.close()
    logger.info(
        "install notify %r sent to %s: HTTP %d",
        body.decode("ascii").strip(),
        url,
        response.status,
    )
    return response.status


# ---------------------------------------------------------------------------
# Resumable download


class _InjectedDrop(Exception):
    """The simulator closed the connection on purpose (drop_after)."""


def download_object(
    phone: Phone,
    url: str,
    expected_size: int | None,
    options: UpdateOptions,
) -> bytes:
    """Download ``url`` into the phone's partial file, resuming as needed.

    A partial file left by an earlier attempt, or by an earlier run, is
    resumed with ``Range: bytes=N-`` and ``If-Range: <ETag>``. The response
    status decides: 206 appends from N, 200 restarts from zero, 416 drops
    the partial file and restarts.

    Raises:
        FumoFailure: 501 when the object does not fit in free storage, 503
            when the connection keeps failing, or the code matching an HTTP
            error status.
    """
    record = phone.download
    if record is None or record.url != url:
        phone.partial_path.unlink(missing_ok=True)
        record = phone.download = DownloadRecord(url=url, size=expected_size)
        phone.save()
    limit = phone.free_storage
    dropped = False
    last_error = "no attempt made"

    for attempt in range(1, MAX_DOWNLOAD_ATTEMPTS + 1):
        offset = phone.partial_path.stat().st_size if phone.partial_path.exists() else 0
        if expected_size is not None and offset >= expected_size > 0:
            break
        headers = {"Accept": "*/*"}
        if offset and record.etag:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = record.etag
            logger.info("resuming %s from byte %d (ETag %s)", url, offset, record.etag)
        elif offset:
            # Without a validator the partial bytes may belong to another
            # version of the object, so they are dropped.
            logger.info("partial file has no ETag; restarting %s from zero", url)
            phone.partial_path.unlink()
            offset = 0
        else:
            logger.info("downloading %s (attempt %d)", url, attempt)
        try:
            dropped = _download_attempt(
                phone, url, headers, offset, expected_size, limit, options, dropped
            )
            break
        except _InjectedDrop:
            last_error = "connection closed by --drop-after"
            dropped = True
        except (OSError, http.client.HTTPException) as error:
            last_error = str(error)
            logger.info("download interrupted: %s", error)
    else:
        raise FumoFailure(
            RESULT_NETWORK_FAILURE,
            f"download of {url} failed {MAX_DOWNLOAD_ATTEMPTS} times; last error: "
            f"{last_error}",
        )

    data = phone.partial_path.read_bytes()
    logger.info("download complete: %d bytes", len(data))
    return data


def _download_attempt(
    phone: Phone,
    url: str,
    headers: dict[str, str],
    offset: int,
    expected_size: int | None,
    limit: int,
    options: UpdateOptions,
    dropped: bool,
) -> bool:
    """Run one GET of the object; return whether the injected drop happened.

    Raises _InjectedDrop, OSError or HTTPException when the transfer stops
    before the end. The partial file then contains the bytes received.
    """
    record = phone.download
    try:
        connection, response = open_http("GET", url, headers, timeout=options.timeout)
    except ValueError as error:
        raise FumoFailure(RESULT_BAD_URL, f"invalid objectURI: {error}") from None
    try:
        if response.status == 416:
            logger.info("server returned 416 for the range; restarting from zero")
            response.read()
            phone.partial_path.unlink(missing_ok=True)
            raise http.client.HTTPException("range not satisfiable (416)")
        if response.status == 206:
            start = _content_range_start(response.getheader("Content-Range"))
            if start != offset:
                raise http.client.HTTPException(
                    f"206 starts at byte {start}, requested {offset}"
                )
            mode = "ab"
        elif response.status == 200:
            if offset:
                logger.info("server sent the whole object (200); restarting from zero")
            offset = 0
            mode = "wb"
        else:
            response.read()
            raise FumoFailure(
                _result_for_http_status(response.status),
                f"GET {url} returned HTTP {response.status} {response.reason}",
            )
        etag = response.getheader("ETag")
        if etag and etag != record.etag:
            record.etag = etag
            phone.save()
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and offset + int(length) > limit:
            raise FumoFailure(
                RESULT_DOWNLOAD_OUT_OF_MEMORY,
                f"object needs {offset + int(length)} bytes, {limit} bytes free",
            )
        return _copy_body(
            phone, response, mode, offset, expected_size, limit, options, dropped
        )
    finally:
        connection.close()


def _copy_body(
    phone: Phone,
    response: http.client.HTTPResponse,
    mode: str,
    offset: int,
    expected_size: int | None,
    limit: int,
    options: UpdateOptions,
    dropped: bool,
) -> bool:
    received = offset
    with phone.partial_path.open(mode) as stream:
        while True:
            chunk_size = DOWNLOAD_CHUNK_SIZE
            drop_at = options.drop_after if not dropped else None
            if drop_at is not None and received < drop_at:
                chunk_size = min(chunk_size, drop_at - received)
            chunk = response.read(chunk_size)
            if not chunk:
                break
            received += len(chunk)
            if received > limit:
                raise FumoFailure(
                    RESULT_DOWNLOAD_OUT_OF_MEMORY,
                    f"object is larger than the {limit} bytes of free storage",
                )
            stream.write(chunk)
            if drop_at is not None and received >= drop_at:
                stream.flush()
                logger.info(
                    "closing the connection after %d bytes (--drop-after)", received
                )
                raise _InjectedDrop()
        stream.flush()
    # http.client returns b"" instead of raising when the connection closes
    # before Content-Length bytes arrived, so both ends are checked here.
    if response.length:
        raise http.client.IncompleteRead(b"", response.length)
    if expected_size is not None and received < expected_size:
        raise http.client.IncompleteRead(b"", expected_size - received)
    return dropped


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200" (RFC 9110 section 14.4).
    if not value or not value.lower().startswith("bytes "):
        return None
    first = value[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else None


# ---------------------------------------------------------------------------
# Fault injection


def flip_byte(data: bytes, offset: int) -> bytes:
    """Return ``data`` with the byte at ``offset`` inverted."""
    changed = bytearray(data)
    changed[offset] ^= 0xFF
    return bytes(changed)


def _payload_offset(data: bytes) -> int:
    """Return the offset of a byte in the middle of the package payload."""
    try:
        header = pkg.parse_header(data)
    except pkg.PackageError:
        return len(data) // 2
    start = pkg.HEADER_SIZE + header.manifest_length
    return start + max(header.payload_length, 1) // 2


def _inject_package_faults(data: bytes, options: UpdateOptions) -> bytes:
    if options.corrupt_download and data:
        offset = _payload_offset(data)
        logger.info(
            "flipping package byte %d in the payload (--corrupt-download)", offset
        )
        data = flip_byte(data, min(offset, len(data) - 1))
    if options.bad_signature and len(data) >= pkg.SIGNATURE_SIZE:
        offset = len(data) - pkg.SIGNATURE_SIZE // 2
        logger.info(
            "flipping package byte %d in the signature (--bad-signature)", offset
        )
        data = flip_byte(data, offset)
    return data


# ---------------------------------------------------------------------------
# The FUMO operation


def perform_fumo_job(phone: Phone, job: FumoJob, options: UpdateOptions) -> FumoReport:
    """Carry out ``job``, store its report as pending and return the report.

    A failed operation (:class:`FumoFailure`) becomes the result code of
    the report, as on a real phone. Only local errors, such as a full disk
    in the state directory, raise.
    """
    logger.info(
        "starting %s for %s (correlator %s)",
        job.operation,
        job.fumo_node,
        job.correlator or "none",
    )
    try:
        if job.operation == fumo.NODE_UPDATE:
            _run_update_only(phone, job, options)
        else:
            _run_download(phone, job, options)
        code = RESULT_SUCCESS
    except FumoFailure as failure:
        code = failure.result_code
        state = (
            fumo.FumoState.UPDATE_FAILED_NO_DATA
            if failure.update_stage
            else fumo.FumoState.DOWNLOAD_FAILED
        )
        phone.set_fumo_state(state, job.fumo_node)
        logger.info("%s failed with FUMO result %d: %s", job.operation, code, failure)
    report = FumoReport(
        source_uri=job.source_uri,
        alert_type=job.alert_type,
        correlator=job.correlator,
        result_code=code,
    )
    phone.finish_job(report)
    logger.info("FUMO result %d queued for the next session", code)
    return report


def _run_download(phone: Phone, job: FumoJob, options: UpdateOptions) -> None:
    # Step 1: the download descriptor.
    if not job.pkg_url:
        raise FumoFailure(RESULT_BAD_URL, f"{job.source_uri}/PkgURL is empty")
    descriptor, direct_body = fetch_descriptor(job.pkg_url, options.timeout)
    notify_uri = descriptor.install_notify_uri if descriptor else None
    update = job.operation == fumo.NODE_DOWNLOAD_AND_UPDATE

    try:
        # Step 2: room for the object, and charge for the update.
        if descriptor is not None:
            _check_storage(phone, descriptor.size)
        if update:
            _check_battery(phone, options)

        # Step 3: the object itself.
        phone.set_fumo_state(fumo.FumoState.DOWNLOAD_PROGRESSING, job.fumo_node)
        phone.save()
        if descriptor is not None:
            data = download_object(
                phone, descriptor.object_uri, descriptor.size, options
            )
            if len(data) != descriptor.size:
                raise FumoFailure(
                    RESULT_CORRUPTED_PACKAGE,
                    f"downloaded {len(data)} bytes, the descriptor announced "
                    f"{descriptor.size}",
                )
        else:
            data = direct_body or b""
            _check_storage(phone, len(data))
        _keep_package(phone, data)
        phone.set_fumo_state(fumo.FumoState.DOWNLOAD_COMPLETE, job.fumo_node)
        phone.save()

        # Step 4: signature, then (DownloadAndUpdate) the update itself.
        manifest, payload = _verify(phone, data, options)
        if update:
            phone.set_fumo_state(fumo.FumoState.READY_TO_UPDATE, job.fumo_node)
            _install(phone, job, manifest, payload, options)
    except FumoFailure as failure:
        if notify_uri:
            post_install_notify(
                notify_uri, install_status_for(failure.result_code), options.timeout
            )
        # A package that failed is never kept for a later Update.
        phone.package_path.unlink(missing_ok=True)
        raise
    if notify_uri:
        post_install_notify(
            notify_uri, install_status_for(RESULT_SUCCESS), options.timeout
        )


def _run_update_only(phone: Phone, job: FumoJob, options: UpdateOptions) -> None:
    try:
        data = phone.package_path.read_bytes()
    except FileNotFoundError:
        raise FumoFailure(
            RESULT_UPDATE_FAILED, "no package stored for Update", update_stage=True
        ) from None
    _check_battery(phone, options)
    try:
        manifest, payload = _verify(phone, data, options)
    except FumoFailure as failure:
        failure.update_stage = True
        phone.package_path.unlink(missing_ok=True)
        raise
    _install(phone, job, manifest, payload, options)


def _check_storage(phone: Phone, size: int) -> None:
    free = phone.free_storage
    if size > free:
        raise FumoFailure(
            RESULT_DOWNLOAD_OUT_OF_MEMORY,
            f"package needs {size} bytes, {free} bytes of storage are free",
        )
    logger.info("storage: %d bytes needed, %d bytes free", size, free)


def _check_battery(phone: Phone, options: UpdateOptions) -> None:
    if phone.battery < options.min_battery:
        raise FumoFailure(
            RESULT_BATTERY_TOO_LOW,
            f"battery at {phone.battery}% is below the {options.min_battery}% an "
            "update needs; not starting",
        )
    logger.info("battery: %d%%, minimum %d%%", phone.battery, options.min_battery)


def _keep_package(phone: Phone, data: bytes) -> None:
    """Move the finished download to the package file."""
    if phone.partial_path.exists():
        phone.partial_path.replace(phone.package_path)
    else:
        phone.package_path.write_bytes(data)
    phone.download = None


def _verify(
    phone: Phone, data: bytes, options: UpdateOptions
) -> tuple[pkg.Manifest, bytes]:
    data = _inject_package_faults(data, options)
    try:
        certificate = load_certificate(phone.cert_path)
    except SigningKeyError as error:
        raise FumoFailure(
            RESULT_VALIDATION_FAILED, f"no usable signing certificate: {error}"
        ) from None
    try:
        manifest, payload = pkg.verify_package(data, certificate)
    except pkg.PackageError as error:
        raise FumoFailure(
            error.fumo_result_code, f"package rejected: {error}"
        ) from None
    logger.info(
        "package signature valid: %s %s -> %s (%s, %d bytes payload)",
        manifest.model,
        manifest.source_version or "any",
        manifest.target_version,
        manifest.payload_type,
        manifest.payload_size,
    )
    return manifest, payload


def _install(
    phone: Phone,
    job: FumoJob,
    manifest: pkg.Manifest,
    payload: bytes,
    options: UpdateOptions,
) -> None:
    # Step 1: room for the new image beside the old one.
    if manifest.target_size > phone.free_storage:
        raise FumoFailure(
            RESULT_UPDATE_OUT_OF_MEMORY,
            f"new image needs {manifest.target_size} bytes, "
            f"{phone.free_storage} bytes free",
            update_stage=True,
        )
    phone.set_fumo_state(fumo.FumoState.UPDATE_PROGRESSING, job.fumo_node)
    phone.save()

    # Step 2: patch the current image.
    current = phone.read_image()
    if options.modify_firmware and current:
        offset = len(current) // 2
        logger.info(
            "flipping image byte %d before patching (--modify-firmware)", offset
        )
        current = flip_byte(current, offset)
        phone.replace_image(current)
    try:
        image = pkg.apply_package(manifest, payload, current, device_model=phone.model)
    except pkg.PackageError as error:
        raise FumoFailure(
            error.fumo_result_code, f"update failed: {error}", update_stage=True
        ) from None

    # Step 3: swap the image and record the new version.
    phone.replace_image(image)
    phone.firmware_version = manifest.target_version
    phone.set_fumo_state(fumo.FumoState.UPDATE_SUCCESSFUL_NO_DATA, job.fumo_node)
    phone.package_path.unlink(missing_ok=True)
    phone.save()
    logger.info(
        "firmware updated to %s (%d bytes, SHA-256 %s)",
        manifest.target_version,
        len(image),
        manifest.target_sha256,
    )


__all__ = [
    "FumoFailure",
    "UpdateOptions",
    "download_object",
    "fetch_descriptor",
    "install_status_for",
    "open_http",
    "perform_fumo_job",
    "post_install_notify",
]
