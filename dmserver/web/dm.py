"""``POST /dm``: the SyncML DM endpoint.

The body is handed to :func:`dmserver.session.service.process_request` in
the database thread pool. Replies carry an exact Content-Length and are never
chunked, because handsets read the reply by Content-Length. The session
token travels in the RespURI query (``?s=...``): WAP proxies strip cookies.
"""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.logger import Logger
from twisted.web import resource, server

from ..session.service import HttpReply, ServerSettings, process_request
from ..store.db import Database

log = Logger(namespace="dmserver.web.dm")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def write_reply(request, reply: HttpReply) -> None:
    request.setResponseCode(reply.http_status)
    request.setHeader(b"Content-Type", reply.content_type.encode("ascii"))
    request.setHeader(b"Content-Length", str(len(reply.body)).encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    for name, value in reply.headers.items():
        request.setHeader(name.encode("ascii"), value.encode("latin-1"))
    request.write(reply.body)
    request.finish()


class DmResource(resource.Resource):
    isLeaf = True

    def __init__(self, db: Database, settings: ServerSettings):
        super().__init__()
        self.db = db
        self.settings = settings

    def render_GET(self, request):
        request.setResponseCode(405)
        request.setHeader(b"Allow", b"POST")
        return b"SyncML DM messages are sent with POST\n"

    def render_POST(self, request):
        declared = request.getHeader(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.settings.max_body:
            return self._too_large(request, int(declared))
        body = request.content.read(self.settings.max_body + 1)
        if len(body) > self.settings.max_body:
            return self._too_large(request, len(body))
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        hmac_header = request.getHeader(b"x-syncml-hmac")
        token = request.args.get(b"s", [b""])[0].decode("ascii", "replace") or None
        now = utcnow()

        def process(session):
            return process_request(
                session,
                body,
                content_type,
                hmac_header.decode("latin-1") if hmac_header else None,
                token,
                self.settings,
                now,
            )

        d = self.db.run(process)
        d.addCallback(lambda reply: write_reply(request, reply))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    def _too_large(self, request, size: int) -> bytes:
        log.warn(
            "rejected SyncML body of {size} bytes from {peer}: above the limit of {limit}",
            size=size,
            peer=request.getClientAddress(),
            limit=self.settings.max_body,
        )
        request.setResponseCode(413)
        return f"body of {size} bytes is above the limit of {self.settings.max_body}\n".encode()

    def _failed(self, failure, request) -> None:
        log.failure("failed to process a SyncML message; nothing was stored", failure)
        if request.finished or request._disconnected:
            return
        request.setResponseCode(500)
        body = b"internal error while processing the SyncML message\n"
        request.setHeader(b"Content-Type", b"text/plain")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)
        request.finish()
