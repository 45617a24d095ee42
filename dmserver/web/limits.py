"""Request body limits enforced while the body arrives, not after.

Twisted reads a whole request body (into memory or a temporary file) before
a resource renders it, so a size check in ``render_POST`` comes too late: a
client announcing ``Content-Length: 10000000000`` would fill the disk first.
:class:`LimitedRequest` checks the announced length as soon as the headers
are in, counts the bytes of chunked bodies as they arrive, and answers 413
and closes the connection when the limit for the path is passed.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web import server

log = Logger(namespace="dmserver.web.limits")

# Bodies of SyncML messages and install notifies; the DM resource applies
# its own (configurable) limit below this one as well.
DM_BODY_LIMIT = 1_048_576
# Everything else, such as bulk device imports through the API.
DEFAULT_BODY_LIMIT = 16 * 1_048_576


class LimitedRequest(server.Request):
    """A Request that rejects oversized bodies before reading them."""

    _rejected = False
    _received = 0

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        limits = getattr(site, "body_limits", None) or {}
        # The channel contains the request path before the body arrives.
        path = getattr(self.channel, "_path", b"") or b""
        for prefix, limit in limits.items():
            if path.startswith(prefix):
                return limit
        return getattr(site, "default_body_limit", DEFAULT_BODY_LIMIT)

    def gotLength(self, length):
        limit = self._limit()
        if length is not None and length > limit:
            self._reject(length, limit)
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._rejected:
            return
        self._received += len(data)
        limit = self._limit()
        if self._received > limit:
            self._reject(self._received, limit)
            return
        super().handleContentChunk(data)

    def process(self):
        if self._rejected:
            return
        super().process()

    def _reject(self, size: int, limit: int) -> None:
        self._rejected = True
        peer = self.channel.transport.getPeer() if self.channel.transport else None
        log.warn(
            "rejected a request body of {size} bytes from {peer}: above the limit of {limit}",
            size=size,
            peer=peer,
            limit=limit,
        )
        body = f"request body of {size} bytes is above the limit of {limit} bytes\n".encode()
        self.channel.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + b"Connection: close\r\n\r\n"
            + body
        )
        self.channel.transport.loseConnection()
