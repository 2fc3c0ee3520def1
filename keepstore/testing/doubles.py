"""Test doubles for code that uses keepstore: a request-by-request verifier transport and a spec'd client mock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any
from unittest import mock

from ..client import KeepClient
from ..config import Retry, Timeout
from ..errors import BlockNotFound
from ..locator import EMPTY_BLOCK, Locator, LocatorLike
from ..store import Data, PutResult, as_view
from ..transport import Request, Response, Transport, TransportError

__all__ = ["KeepClientMock", "Step", "VerifierTransport", "expect", "mock_client"]

#: One expected request: check it (assert), then return the response or raise `TransportError`.
Step = Callable[[Request], Response]


def _name(step: Step) -> str:
    return getattr(step, "__name__", None) or repr(step)


class VerifierTransport(Transport):
    """A `Transport` that expects an exact sequence of requests, one *step* per request.

    Step *i* receives the *i*-th request; it checks it (``assert ...``) and returns the
    `Response` to give, or raises `TransportError` to simulate a network failure. A request
    beyond the last step, or a step's failed check, raises `AssertionError` naming the request
    (method and URL, never headers: they carry the token). `assert_done` fails when steps are
    left, and re-raises the first failure even if the code under test swallowed it.

    Requests a client sends in parallel (replica writes to disk-typed services) arrive in no
    fixed order; verify those with `copies=1`, or with services given as URLs (which are
    written one at a time).
    """

    def __init__(self, steps: Iterable[Step]) -> None:
        self._steps = list(steps)
        self._next = 0
        self._lock = threading.Lock()
        self._failure: AssertionError | None = None
        self.requests: list[Request] = []

    def __repr__(self) -> str:
        return f"VerifierTransport({self._next} of {len(self._steps)} steps used)"

    @property
    def remaining(self) -> int:
        """How many steps have not yet been used."""
        return max(0, len(self._steps) - self._next)

    def request(self, request: Request) -> Response:
        with self._lock:
            index = self._next
            self._next += 1
            self.requests.append(request)
        what = f"request {index + 1} ({request.method} {request.url})"
        if index >= len(self._steps):
            raise self._fail(AssertionError(f"unexpected {what}: only {len(self._steps)} request(s) were expected"))
        step = self._steps[index]
        try:
            response = step(request)
        except TransportError:
            raise  # a simulated network failure, as the step intends
        except AssertionError as exc:
            raise self._fail(AssertionError(f"{what} failed step {_name(step)}: {exc}")) from exc
        if not isinstance(response, Response):
            raise self._fail(AssertionError(f"step {_name(step)} returned {type(response).__name__}, not a Response"))
        return response

    def _fail(self, error: AssertionError) -> AssertionError:
        with self._lock:
            if self._failure is None:
                self._failure = error
        return error

    def assert_done(self) -> None:
        """Fail if a check failed or a request was unexpected, or if expected requests never came."""
        if self._failure is not None:
            raise AssertionError(str(self._failure)) from self._failure
        if self._next < len(self._steps):
            missing = ", ".join(f"{i + 1}: {_name(s)}" for i, s in enumerate(self._steps) if i >= self._next)
            raise AssertionError(f"{len(self._steps) - self._next} expected request(s) never came (steps {missing})")


def expect(method: str, locator: LocatorLike | None = None, *, status: int = 200, body: bytes | None = None,
           headers: Mapping[str, str] | None = None) -> Step:
    """A step: assert the request's *method* (and block, when *locator* is given); answer with *status*.

    The answer's *body* defaults, for a successful PUT, to the locator of the data sent (as
    a Keep server answers); otherwise to nothing.
    """
    want = Locator.parse(locator).bare() if isinstance(locator, str) else locator.bare() if locator else None

    def step(request: Request) -> Response:
        assert request.method == method, f"expected {method}, got {request.method}"
        if want is not None:
            asked = request.url.rsplit("/", 1)[-1]
            assert asked.split("+", 1)[0] == want.md5, f"expected block {want}, got {asked}"
        answer = body
        if answer is None:
            answer = b""
            if method == "PUT" and status == 200 and request.body is not None:
                answer = str(Locator.for_data(request.body)).encode()
        return Response(status, dict(headers or {}), answer)

    step.__name__ = f"expect({method}{' ' + str(want) if want else ''} -> {status})"
    return step


def _done(value: Any = None, error: BaseException | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


class _FakeKeep:
    """In-memory behaviour for a client mock: put stores, get/head read, missing is `BlockNotFound`."""

    def __init__(self, blocks: dict[str, bytes]) -> None:
        self.blocks = blocks

    def put_block(self, data: Data, **_: Any) -> PutResult:
        view = as_view(data)
        loc = Locator.for_data(view)
        self.blocks[str(loc)] = bytes(view)
        return PutResult(loc, 1)

    def put(self, data: Data, **options: Any) -> Locator:
        return self.put_block(data, **options).locator

    def get(self, locator: LocatorLike, **_: Any) -> bytes:
        key = str(Locator.parse(str(locator)).bare())
        if key == EMPTY_BLOCK:
            return b""
        if key not in self.blocks:
            raise BlockNotFound(f"{key} not found (mock client)", locator=key)
        return self.blocks[key]

    def head(self, locator: LocatorLike, **options: Any) -> bool:
        self.get(locator, **options)
        return True

    def exists(self, locator: LocatorLike, **_: Any) -> bool:
        try:
            return self.head(locator)
        except BlockNotFound:
            return False

    def later(self, method: Callable[..., Any]) -> Callable[..., Future[Any]]:
        def run(*args: Any, **kwargs: Any) -> Future[Any]:
            try:
                return _done(method(*args, **kwargs))
            except BlockNotFound as exc:
                return _done(error=exc)
        return run


def mock_client(*, blocks: dict[str, bytes] | None = None, **attributes: Any) -> Any:
    """A mock `KeepClient` with the real class's methods and signatures.

    Built with ``unittest.mock.create_autospec(KeepClient, instance=True)``: calling a method
    that `KeepClient` lacks, or passing an argument its signature rejects, raises
    (`AttributeError`, `TypeError`) instead of passing silently. Every method is a mock, so
    ``kc.put.assert_called_once_with(...)`` works; set ``kc.get.return_value`` or
    ``side_effect`` as usual. With *blocks* (a dict, e.g. ``{}``), put/get/head/exists, their
    ``*_async`` forms and ``get_many``/``exists_many`` behave like an in-memory Keep that
    stores into it. *attributes* set instance attributes (``copies=1``).
    """
    client: Any = mock.create_autospec(KeepClient, instance=True)
    defaults: dict[str, Any] = dict(copies=2, threads=8, cache=None, cache_writes=False, storage_classes=(),
                                    timeout=Timeout(), retry=Retry.from_value(None), api_host=None)
    for name, value in {**defaults, **attributes}.items():
        setattr(client, name, value)
    if blocks is not None:
        fake = _FakeKeep(blocks)
        for name in ("put", "put_block", "get", "head", "exists"):
            getattr(client, name).side_effect = getattr(fake, name)
        client.put_async.side_effect = fake.later(fake.put)
        client.get_async.side_effect = fake.later(fake.get)
        client.head_async.side_effect = fake.later(fake.head)
        client.get_many.side_effect = lambda locators: [fake.get(loc) for loc in locators]
        client.exists_many.side_effect = lambda locators: [fake.exists(loc) for loc in locators]
    client.__enter__.return_value = client
    return client


#: The same as `mock_client` (for those who spell a mock as a class).
KeepClientMock = mock_client
