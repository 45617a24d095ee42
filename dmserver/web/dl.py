"""``/dl``: download descriptors, resumable package downloads, install notify.

Packages are served with a strong ETag (the SHA-256 of the package file) and
single byte ranges (RFC 9110 section 14): ``206`` with Content-Range for a
satisfiable range, ``416`` with ``Content-Range: bytes */size`` otherwise,
and ``200`` for the whole file when If-Range names another ETag. Several
ranges in one request are answered with the whole file, which RFC 9110
allows; handsets resume with a single open range (``bytes=N-``).
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.logger import Logger
from twisted.web import resource, server, static

from ..fota import downloads
from ..fota.descriptor import DD_MEDIA_TYPE, InstallNotifyError
from ..session.service import ServerSettings
from ..store.db import Database
from .dm import utcnow

log = Logger(namespace="dmserver.web.dl")

MAX_NOTIFY_BODY = 4096
# 19 digits hold any 64-bit file offset.
MAX_RANGE_DIGITS = 19
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class RangeNotSatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive (start, end) of a single byte range, or None for
    the whole file; raise RangeNotSatisfiable for a range beyond the end."""
    if not header:
        return None
    if "," in header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None  # RFC 9110: ignore a Range header that does not parse
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if len(first) > MAX_RANGE_DIGITS or len(last) > MAX_RANGE_DIGITS:
        # Beyond any file size; also keeps int() away from huge inputs.
        if first == "":
            return (0, size - 1) if size else None
        raise RangeNotSatisfiable("range start beyond any file size")
    if first == "":
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable("suffix range of zero bytes")
        return max(0, size - length), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {start}-{last} outside 0-{size - 1}")
    return start, min(end, size - 1)


def _etag_listed(header: str, etag: str) -> bool:
    """True when an If-Match/If-None-Match value is "*" or lists ``etag``
    (weak comparison, RFC 9110 section 8.8.3.2)."""
    values = [value.strip() for value in header.split(",")]
    return "*" in values or any(value.removeprefix("W/") == etag for value in values)


def _plain(request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    body = (text + "\n").encode()
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


class DownloadResource(resource.Resource):
    isLeaf = True

    def __init__(self, db: Database, settings: ServerSettings, data_dir: Path):
        super().__init__()
        self.db = db
        self.settings = settings
        self.data_dir = data_dir

    def _route(self, request) -> tuple[str, str] | None:
        parts = [p.decode("ascii", "replace") for p in request.postpath if p]
        if len(parts) != 2 or parts[0] not in ("dd", "pkg", "notify"):
            return None
        return parts[0], parts[1]

    def render_GET(self, request):
        route = self._route(request)
        if route is None or route[0] == "notify":
            return _plain(request, 404, "no such download")
        kind, token = route
        if kind == "dd":
            record = request.method != b"HEAD"
            d = self.db.run(
                lambda s: downloads.descriptor_for(s, token, self.settings.base_url, utcnow(), record=record)
            )
            d.addCallback(self._send_descriptor, request)
        else:
            d = self.db.run(lambda s: downloads.package_for(s, token, self.data_dir))
            d.addCallback(self._send_package, request)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def render_HEAD(self, request):
        return self.render_GET(request)

    def render_POST(self, request):
        route = self._route(request)
        if route is None or route[0] != "notify":
            return _plain(request, 405, "only installNotifyURI accepts POST")
        token = route[1]
        body = request.content.read(MAX_NOTIFY_BODY + 1)
        if len(body) > MAX_NOTIFY_BODY:
            return _plain(request, 413, f"install notify body above {MAX_NOTIFY_BODY} bytes")
        d = self.db.run(lambda s: downloads.install_notify(s, token, body, utcnow()))

        def done(result):
            _finish(request, _plain(request, 200, f"{result[0]} received"))

        d.addCallback(done)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _send_descriptor(self, body: bytes, request) -> None:
        request.setHeader(b"Content-Type", DD_MEDIA_TYPE.encode())
        request.setHeader(b"Content-Length", str(len(body)).encode())
        _finish(request, body if request.method != b"HEAD" else b"")

    def _send_package(self, package: downloads.PackageFile, request) -> None:
        size = package.size
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"ETag", package.etag.encode())
        request.setHeader(b"Content-Type", downloads.PACKAGE_MEDIA_TYPE.encode())
        if_none_match = (request.getHeader(b"if-none-match") or b"").decode("latin-1")
        if_match = (request.getHeader(b"if-match") or b"").decode("latin-1")
        if if_match and not _etag_listed(if_match, package.etag):
            _finish(request, _plain(request, 412, "If-Match does not name the current package"))
            return
        if if_none_match and _etag_listed(if_none_match, package.etag):
            request.setResponseCode(304)
            request.finish()
            return
        range_header = (request.getHeader(b"range") or b"").decode("latin-1")
        if_range = (request.getHeader(b"if-range") or b"").decode("latin-1").strip()
        if if_range and if_range != package.etag:
            range_header = ""
        try:
            byte_range = parse_range(range_header, size)
        except RangeNotSatisfiable as error:
            log.info("416 for job {job_id}: {error}", job_id=package.job_id, error=str(error))
            request.setHeader(b"Content-Range", f"bytes */{size}".encode())
            _finish(request, _plain(request, 416, str(error)))
            return
        start, end = byte_range if byte_range else (0, size - 1)
        length = end - start + 1
        if byte_range:
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", f"bytes {start}-{end}/{size}".encode())
        request.setHeader(b"Content-Length", str(length).encode())
        if request.method == b"HEAD" or length <= 0:
            request.finish()
            return
        try:
            handle = open(package.path, "rb")
        except OSError as error:
            log.error("package file of job {job_id} is missing: {error}", job_id=package.job_id, error=error)
            request.setResponseCode(500)
            request.finish()
            return
        producer = static.SingleRangeStaticProducer(request, handle, start, length)
        finished = request.notifyFinish()

        def completed(_):
            handle.close()
            return self.db.run(
                lambda s: downloads.package_sent(s, package.job_id, start, end, size, utcnow())
            )

        def aborted(failure):
            handle.close()
            log.info("download of job {job_id} interrupted at range {start}-{end}", job_id=package.job_id, start=start, end=end)

        finished.addCallbacks(completed, aborted)
        finished.addErrback(lambda f: log.failure("recording download progress failed", f))
        producer.start()

    def _failed(self, failure, request) -> None:
        if failure.check(downloads.DownloadNotFound):
            _finish(request, _plain(request, 404, str(failure.value)))
            return
        if failure.check(downloads.InstallNotifyConflict):
            _finish(request, _plain(request, 409, str(failure.value)))
            return
        if failure.check(InstallNotifyError):
            log.warn("rejected install notify: {error}", error=str(failure.value))
            _finish(request, _plain(request, 400, f"invalid install notify: {failure.value}"))
            return
        log.failure("download request failed", failure)
        _finish(request, _plain(request, 500, "internal error"))


def _finish(request, body: bytes) -> None:
    if request.finished or request._disconnected:
        return
    if body:
        request.write(body)
    request.finish()
