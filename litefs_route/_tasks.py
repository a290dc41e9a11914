"""``call_on_primary``: run a registered function on the primary, exactly once, and read its write here.

On the primary, functions are registered by name with ``@primary_task("name")``
and served by a small endpoint that the app puts *inside* its
``PrimaryRoutingMiddleware`` (:func:`serve_tasks_wsgi`, :func:`serve_tasks_asgi`):
``POST <path>/<name>`` with a JSON object of arguments. The caller sends it
over Fly's private network to the primary's ``forward_url`` as a request
forwarded by litefs-route, so the middleware checks the forward secret
(403 without it, the app never called) and runs it only on the primary; the
endpoint runs only such authenticated requests, and only registered names.
Arguments and results are JSON, never pickle.

Exactly once: each call carries an idempotency key. The caller retries only
what provably never ran: a connection that could not be opened, or the
middleware's ``503`` (no primary; the request reached a node that was not the
primary). Once the request may have been sent, a lost connection or an
unknown answer raises :class:`TaskMayHaveRun`, never a retry. The primary
remembers each key's answer (in its process, for :data:`KEY_MEMORY` calls):
a duplicate delivery gets the first answer and does not run again.

The endpoint answers the databases' TXIDs after the function ran; the
caller returns only once its own node has replicated them, so what the
function wrote can be read here at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import inspect
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import current_request
from ._forwarding import DEFAULT_FORWARD_URL, HOP_HEADER, SECRET_ENV, SECRET_HEADER, ForwardURL, resolve_forward_url
from ._hooks import build_cache, node_cache
from ._log_fields import log_fields
from ._mount import Role, default_instance_id, read_position
from ._ops.waits import WaitTimeout, wait_for_txid
from ._replies import OUTCOME_HEADER
from ._secret import Secret
from ._subscriber import resolve_api_url

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ._state_cache import StateCache
    from .asgi import ASGIApp

__all__ = [
    "DEFAULT_TASK_PATH",
    "TaskClient",
    "TaskError",
    "TaskFailed",
    "TaskMayHaveRun",
    "TaskNotReplicated",
    "TaskNotRun",
    "TaskRefused",
    "call_on_primary",
    "primary_task",
    "serve_tasks_asgi",
    "serve_tasks_wsgi",
]

logger = logging.getLogger("litefs_route")

#: Where the endpoint answers (``POST <path>/<name>``).
DEFAULT_TASK_PATH = "/_litefs_route/tasks"
#: The idempotency key's header.
KEY_HEADER = "litefs-route-task-key"
#: How many answers (by key) the primary's process remembers.
KEY_MEMORY = 10_000
#: The largest request body the endpoint reads.
BODY_LIMIT = 1_000_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_KEY = re.compile(r"[A-Za-z0-9-]{16,64}")
# Seconds between attempts while no primary answers (a connection refused, a 503).
_RETRY_EVERY = 0.1

F = TypeVar("F", bound=Callable[..., Any])


class TaskError(Exception):
    """A :func:`call_on_primary` that did not return a result."""


class TaskNotRun(TaskError):
    """It did not run: no primary could be reached before the timeout. Safe to call again."""


class TaskRefused(TaskError):
    """The primary refused it before running it (wrong secret, unregistered name, bad arguments)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class TaskFailed(TaskError):
    """It ran on the primary and raised; the message is the primary's ``type: text``."""


class TaskMayHaveRun(TaskError):
    """The request was sent and its answer was lost or unknown: it may have run. Never retried."""


class TaskNotReplicated(TaskError):
    """It ran (here is its result), but this node did not replicate its write within the timeout."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


# -- the registry -------------------------------------------------------------

_registry: dict[str, Callable[..., Any]] = {}


def primary_task(name: str) -> Callable[[F], F]:
    """Register the decorated function under *name*, for :func:`call_on_primary` (sync or async).

    Its arguments are keyword arguments decoded from JSON; its return value
    must encode as JSON.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"a task name is letters, digits and ._:- (at most 128), got {name!r}")

    def register(func: F) -> F:
        if _registry.get(name, func) is not func:
            raise ValueError(f"a task named {name!r} is already registered")
        _registry[name] = func
        return func

    return register


# -- the primary's side -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]


class _Keys:
    """Each idempotency key's answer (None while it runs), the most recent :data:`KEY_MEMORY`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: collections.OrderedDict[str, _Answer | None] = collections.OrderedDict()

    def claim(self, key: str) -> tuple[bool, _Answer | None]:
        """(True, None) if *key* is new (the caller runs it); else (False, its answer or None while it runs)."""
        with self._lock:
            if key in self._answers:
                return False, self._answers[key]
            self._answers[key] = None
            while len(self._answers) > KEY_MEMORY:
                self._answers.popitem(last=False)
            return True, None

    def done(self, key: str, answer: _Answer) -> None:
        with self._lock:
            self._answers[key] = answer


_keys = _Keys()


def _refusal(status: int, message: str) -> _Answer:
    return _Answer(status, {"error": message})


def _check(name: str, key: str | None) -> tuple[Callable[..., Any] | None, _Answer | None]:
    """The function to run, or the refusal: an unauthenticated request, an unknown name, a bad key."""
    ctx = current_request.get()
    claim = ctx.request.forward_claim if ctx is not None else None
    secret = ctx.routing.rules.forward_secret if ctx is not None else None
    # The middleware answered 403 to a wrong secret; a request with none at all would run as any write.
    if claim is None or secret is None or not secret.matches(claim):
        return None, _refusal(403, "a task runs only when litefs-route forwards it with the cluster's forward secret")
    func = _registry.get(name)
    if func is None:
        return None, _refusal(404, f"no task named {name[:128]!r} is registered on the primary")
    if key is None or not _KEY.fullmatch(key):
        return None, _refusal(400, f"a task needs an idempotency key ({KEY_HEADER}: 16-64 letters, digits, -)")
    return func, None


def _arguments(body: bytes) -> dict[str, Any] | _Answer:
    try:
        args = json.loads(body)
    except ValueError:
        return _refusal(400, "the arguments are not JSON")
    if not isinstance(args, dict):
        return _refusal(400, "the arguments are not a JSON object")
    return args


def _txids() -> dict[str, int]:
    """Each database's TXID now, as the middleware knows its databases (else ``$DATABASE_FILENAME``)."""
    ctx = current_request.get()
    if ctx is None:
        return {}
    litefs_dir = ctx.routing.cache.litefs_dir
    if not litefs_dir:
        return {}
    if ctx.routing.positions is not None:
        names: Iterable[str] = [w.database for w in ctx.routing.positions.watchers]
    else:
        names = [n.strip() for n in os.environ.get("DATABASE_FILENAME", "").split(",") if n.strip()]
    found: dict[str, int] = {}
    for name in names:
        try:
            position = read_position(litefs_dir, name)
        except OSError as exc:  # the mount died after the task ran: its answer still counts, without this TXID
            logger.warning(
                "reading %s-pos after a task failed (%s): the caller will not wait for it",
                name,
                exc,
                extra=log_fields(event="position_unreadable", database=name, reason=str(exc)),
            )
            continue
        if position is not None:
            found[name] = position.txid
    return found


def _ran(name: str, result: Any) -> _Answer:
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return _Answer(500, {"error": f"the result of {name!r} is not JSON: {exc}", "txids": _txids()})
    return _Answer(200, {"result": result, "txids": _txids()})


def _raised(name: str, exc: Exception) -> _Answer:
    logger.warning(
        "task %s raised %s",
        name,
        type(exc).__name__,
        exc_info=exc,
        extra=log_fields(event="task_raised", task=name, reason=type(exc).__name__),
    )
    return _Answer(500, {"error": f"{type(exc).__name__}: {str(exc)[:500]}", "txids": _txids()})


def _task_name(path: str, prefix: str) -> str | None:
    if not path.startswith(prefix + "/"):
        return None
    return path[len(prefix) + 1 :]


def _encode(answer: _Answer) -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps(answer.body).encode()
    status = f"{answer.status} {http.client.responses.get(answer.status, '')}".rstrip()
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


def serve_tasks_wsgi(app: WSGIApplication, path: str = DEFAULT_TASK_PATH) -> WSGIApplication:
    """*app*, with the task endpoint at ``POST <path>/<name>``; wrap the result in ``PrimaryRoutingMiddleware``."""
    prefix = path.rstrip("/")

    def tasks(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        name = _task_name(environ.get("PATH_INFO", ""), prefix)
        if name is None or environ.get("REQUEST_METHOD") != "POST":
            return app(environ, start_response)
        answer = _answer_sync(name, environ.get("HTTP_" + KEY_HEADER.upper().replace("-", "_")), environ)
        status, headers, body = _encode(answer)
        start_response(status, headers)
        return [body]

    return tasks


def _answer_sync(name: str, key: str | None, environ: WSGIEnvironment) -> _Answer:
    func, refusal = _check(name, key)
    if refusal is not None:
        return refusal
    assert func is not None
    assert key is not None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not 0 <= length <= BODY_LIMIT:
        return _refusal(400, f"the arguments need a Content-Length of at most {BODY_LIMIT}")
    args = _arguments(environ["wsgi.input"].read(length))
    if isinstance(args, _Answer):
        return args
    new, answer = _keys.claim(key)
    if not new:
        return answer or _refusal(409, "a call with this idempotency key is running")
    try:
        result = func(**args)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        answer = _ran(name, result)
    except Exception as exc:
        answer = _raised(name, exc)
    _keys.done(key, answer)
    return answer


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


def serve_tasks_asgi(app: ASGIApp, path: str = DEFAULT_TASK_PATH) -> ASGIApp:
    """*app*, with the task endpoint at ``POST <path>/<name>``; wrap the result in ``PrimaryRoutingMiddleware``.

    A sync task runs in a worker thread (with the request's context): the event loop never blocks.
    """
    prefix = path.rstrip("/")

    async def tasks(scope: Any, receive: Any, send: Any) -> None:
        name = _task_name(scope.get("path", ""), prefix) if scope["type"] == "http" else None
        if name is None or scope.get("method") != "POST":
            await app(scope, receive, send)
            return
        key = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == KEY_HEADER.encode()), None)
        answer = await _answer_async(name, key, receive)
        status, headers, body = _encode(answer)
        await send(
            {
                "type": "http.response.start",
                "status": int(status.split()[0]),
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return tasks


async def _answer_async(name: str, key: str | None, receive: Any) -> _Answer:
    func, refusal = _check(name, key)
    if refusal is not None:
        return refusal
    assert func is not None
    assert key is not None
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _refusal(400, "the caller went away before sending its arguments")
        body += message.get("body", b"")
        if len(body) > BODY_LIMIT:
            return _refusal(400, f"the arguments are larger than {BODY_LIMIT} bytes")
        if not message.get("more_body"):
            break
    args = _arguments(bytes(body))
    if isinstance(args, _Answer):
        return args
    new, answer = _keys.claim(key)
    if not new:
        return answer or _refusal(409, "a call with this idempotency key is running")
    try:
        if inspect.iscoroutinefunction(func):
            result = await func(**args)
        else:
            result = await asyncio.to_thread(func, **args)  # copies the context: current_request() works there
        answer = await asyncio.to_thread(_ran, name, result)  # reads -pos: a FUSE round trip
    except Exception as exc:
        answer = await asyncio.to_thread(_raised, name, exc)
    _keys.done(key, answer)
    return answer


# -- the caller's side --------------------------------------------------------


class TaskClient:
    """How this node reaches the primary's task endpoint (:func:`call_on_primary` uses one built from the env).

    *forward_url* and *forward_secret* are the middleware's options of the
    same names (defaults: Fly's private network on port 8080, and
    ``$LITEFS_ROUTE_FORWARD_SECRET``); *litefs_dir* defaults to ``$LITEFS_DIR``
    (the reading the middleware keeps, if this process has one); *timeout*
    bounds finding a primary, the call itself, and the wait for its TXIDs.
    """

    def __init__(
        self,
        *,
        forward_url: ForwardURL = DEFAULT_FORWARD_URL,
        forward_secret: str | None = None,
        litefs_dir: str | None = None,
        instance_id: str | None = None,
        litefs_api_url: str | None = None,
        path: str = DEFAULT_TASK_PATH,
        timeout: float = 30.0,
    ) -> None:
        secret = forward_secret if forward_secret is not None else os.environ.get(SECRET_ENV)
        if not secret or len(secret) < 16:
            raise ValueError(f"call_on_primary needs the forward secret (forward_secret or ${SECRET_ENV})")
        self._secret = Secret(secret)
        self.forward_url = forward_url
        self.path = path.rstrip("/")
        self.timeout = timeout
        self.api_url = resolve_api_url(litefs_api_url)
        self._cache: StateCache
        if litefs_dir is None:
            self._cache = node_cache()
        else:
            self._cache = build_cache(litefs_dir, instance_id or default_instance_id(), 1.0, litefs_api_url)

    def __repr__(self) -> str:
        return f"TaskClient(forward_url={self.forward_url!r}, litefs_dir={self._cache.litefs_dir!r})"

    def call(self, name: str, /, **args: Any) -> Any:
        """Run the task *name* on the primary with *args* (JSON); its result, once this node has its write."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"a task name is letters, digits and ._:- (at most 128), got {name!r}")
        body = json.dumps(args).encode()  # before anything is sent: a TypeError here ran nothing
        key = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout
        status, headers, payload, primary = self._send(name, key, body, deadline)
        answer = self._decode(name, primary, status, headers, payload)
        result = answer.get("result")
        txids = answer.get("txids") or {}
        litefs_dir = self._cache.litefs_dir
        if litefs_dir and isinstance(txids, dict):
            for database, txid in txids.items():
                try:
                    wait_for_txid(
                        litefs_dir,
                        str(database),
                        int(txid),
                        max(0.0, deadline - time.monotonic()),
                        api_url=self.api_url,
                    )
                except WaitTimeout as exc:
                    message = f"task {name!r} ran on {primary}, but {database} did not reach TXID {txid} here: {exc}"
                    raise TaskNotReplicated(message, result) from None
        return result

    def _send(
        self, name: str, key: str, body: bytes, deadline: float
    ) -> tuple[int, http.client.HTTPMessage, bytes, str]:
        """(status, headers, body, primary) of the first attempt that reached a primary; retries only unsent ones."""
        last, retries = "no primary known", 0  # the first retry is logged at INFO, the rest at DEBUG
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TaskNotRun(f"task {name!r} did not run: {last} within {self.timeout:g} s")
            state = self._cache.get()
            if state.role is Role.NO_PRIMARY or state.primary_id is None:
                last = f"no primary known ({state.detail})"
                if not self._cache.wait_for_change(state, min(remaining, _RETRY_EVERY)):
                    time.sleep(min(remaining, _RETRY_EVERY))
                continue
            primary = state.primary_id
            target = resolve_forward_url(self.forward_url, primary)
            conn = http.client.HTTPConnection(target.host, target.port, timeout=min(remaining, self.timeout))
            try:
                try:
                    conn.connect()
                except OSError as exc:  # nothing was sent: safe to try again
                    last = f"{primary} ({target.host}:{target.port}) could not be reached ({exc})"
                    logger.log(
                        logging.DEBUG if retries else logging.INFO,
                        "task %s: %s; trying again",
                        name,
                        last,
                        extra=log_fields(event="task_retried", task=name, target=primary, reason=last),
                    )
                    retries += 1
                    time.sleep(min(max(0.0, deadline - time.monotonic()), _RETRY_EVERY))
                    continue
                try:
                    conn.request(
                        "POST",
                        f"{target.prefix}{self.path}/{name}",
                        body=body,
                        headers={
                            "Content-Type": "application/json",
                            KEY_HEADER: key,
                            SECRET_HEADER: self._secret.reveal(),
                            HOP_HEADER: "1",
                        },
                    )
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    raise TaskMayHaveRun(
                        f"task {name!r} may have run on {primary}: the connection failed after it was sent "
                        f"({type(exc).__name__}: {exc}); not retried"
                    ) from None
            finally:
                conn.close()
            if response.status == 503 and response.getheader(OUTCOME_HEADER) is None:
                # The middleware's: no primary there, or it was not the primary. Nothing ran.
                last = f"{primary} answered 503 ({payload[:200].decode(errors='replace').strip()})"
                logger.log(
                    logging.DEBUG if retries else logging.INFO,
                    "task %s: %s; trying again",
                    name,
                    last,
                    extra=log_fields(event="task_retried", task=name, target=primary, reason=last),
                )
                retries += 1
                time.sleep(min(max(0.0, deadline - time.monotonic()), _RETRY_EVERY))
                continue
            return response.status, response.headers, payload, primary

    @staticmethod
    def _decode(
        name: str, primary: str, status: int, headers: http.client.HTTPMessage, payload: bytes
    ) -> dict[str, Any]:
        answer: Any = None
        with contextlib.suppress(ValueError):
            answer = json.loads(payload)
        error = answer.get("error") if isinstance(answer, dict) else None
        if status == 200 and isinstance(answer, dict):
            return answer
        if status in (400, 403, 404) and headers.get(OUTCOME_HEADER) is None:
            text = error or payload[:200].decode(errors="replace").strip()
            raise TaskRefused(f"task {name!r} refused by {primary} ({status}): {text}", status)
        if status == 500 and error is not None:
            raise TaskFailed(f"task {name!r} failed on {primary}: {error}")
        raise TaskMayHaveRun(f"task {name!r} may have run on {primary}: it answered {status} ({error or 'no detail'})")


_default_client: TaskClient | None = None
_default_lock = threading.Lock()


def call_on_primary(name: str, /, **json_args: Any) -> Any:
    """Run the task registered as *name* on the primary, exactly once; its result once this node has its write.

    Blocking (call it off the event loop: ``await asyncio.to_thread(call_on_primary, ...)``).
    Configured from the environment (see :class:`TaskClient`, whose
    :meth:`~TaskClient.call` takes the same arguments). Raises
    :class:`TaskNotRun` (safe to call again), :class:`TaskRefused`,
    :class:`TaskFailed`, :class:`TaskMayHaveRun` (never retried),
    :class:`TaskNotReplicated`.
    """
    global _default_client
    with _default_lock:
        if _default_client is None:
            forward_url = os.environ.get("LITEFS_ROUTE_FORWARD_URL") or DEFAULT_FORWARD_URL
            _default_client = TaskClient(forward_url=forward_url)
        client = _default_client
    return client.call(name, **json_args)
