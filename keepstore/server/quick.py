"""The quick GET: the commonest request `keep serve` answers (a small, verified, kept block)
served in one pass, and the accounting every request ends with."""

from __future__ import annotations

import enum
import logging
import re
import socket
import time

from ..errors import LocatorError
from ..locator import Locator
from .connection import reset_on_close, send_now
from .context import Context
from .exchange import RequestRecord, public_path, request_id_of, token_of
from .verified import cached_copy
from .wire import SMALL_BODY, LeanRequest, response_head

__all__ = ["Served", "account", "quick_get"]

access_log = logging.getLogger("keepstore.server.access")

# A sized locator, bare or with one +A signature and no other hint: anything else (a remote
# signature, a hint, a size with leading zeros or over five digits) takes the general path.
_QUICK_PATH = re.compile(r"/([0-9a-f]{32})\+([1-9][0-9]{0,4})(\+A[0-9a-f]{40}@[0-9a-f]{8})?\Z")


class Served(enum.Enum):
    """What `quick_get` did with a request."""

    PASSED = "passed"  # not a quick GET: nothing read, sent or counted; the general path answers it
    ANSWERED = "answered"  # answered whole; the connection can go on
    LOST = "lost"  # the answer could not be sent: close the connection


def quick_get(ctx: Context, conn: socket.socket, head: LeanRequest, *, close: bool, server: str,
              client: str) -> Served:
    """Answer *head* when it is a GET of a small block held in memory (`cached_copy`), with
    every rule the general path applies to such a request, in one pass: admission, the
    signature check, the request record, the access log and metrics. Anything else, and any
    request the general path would refuse or treat specially (a body, no Host, ``Expect``, a
    fault planned, TLS, a signature that does not check, a block not kept), is `PASSED`
    untouched, and the general path answers it as it always has.

    *close*: the client asked for ``Connection: close``; *server*: the ``Server`` header;
    *client*: the address for the access log. The caller has checked there is no TLS.
    """
    start = time.monotonic()
    match = _QUICK_PATH.match(head.path) if head.command == "GET" else None
    if match is None or not head.headers.bodiless() or ctx.faults.planned:
        return Served.PASSED
    md5, size = match.group(1), int(match.group(2))
    if size > SMALL_BODY:  # sent with its head in one write, or not here
        return Served.PASSED
    permissions = ctx.permissions
    if permissions.require_signatures:  # a denial is answered by the general path, with its reason
        try:
            loc = Locator.parse(head.path[1:])
        except LocatorError:
            return Served.PASSED
        if permissions.check_read(loc, token_of(head.headers)) is not None:
            return Served.PASSED
    blocks = ctx.blocks
    data = cached_copy(blocks.volumes, md5, size, blocks.verified)
    if data is None or not ctx.admission.admit():  # a full server's 503 comes from the general path
        return Served.PASSED
    try:  # recorded before the slot is freed, as every request: no request in flight means all recorded
        record = RequestRecord("GET", public_path(head.path), 200, 0, 0.0, request_id_of(head.headers))
        ctx.requests.append(record)  # before the client can see its answer
        served = Served.ANSWERED
        answer = response_head(200, {"Content-Length": str(size), "Content-Type": "application/octet-stream"},
                               server, close=close) + data
        try:
            send_now(conn, answer)
            record.bytes_out = size
        except OSError as exc:  # gone, or too slow to take 64 KiB within the idle timeout
            served = Served.LOST
            if isinstance(exc, TimeoutError):
                reset_on_close(conn)
        record.seconds = time.monotonic() - start
        account(ctx, client, record, 0)
        return served
    finally:
        ctx.admission.release()


def account(ctx: Context, client: str, record: RequestRecord, received: int) -> None:
    """Write *record*'s access-log line and count it in the metrics (*received*: block bytes
    stored), once it is final."""
    access_log.info('%s "%s %s" %s %d %.1fms %s', client, record.method, record.path, record.status,
                    record.bytes_out, record.seconds * 1000, record.request_id or "-")
    if ctx.metrics is not None:
        ctx.metrics.observe(record.method, record.status, record.seconds, received, record.bytes_out)
