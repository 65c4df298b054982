"""The HTTP face of `detain serve --http`: Judge0's API, detain's own, health and metrics.

An ASGI application (Starlette, served by uvicorn). Every request is hostile input until
checked: bodies are capped before they are read in full, JSON that does not parse or fit
is a 4xx JSON error (never a 500 with a traceback), each caller is rate-limited, and a
caller sees and deletes only its own submissions (another's token is a 404, as if unknown).
Accepted submissions are stored before they run (store.py), so none is lost to a restart.
Whatever may block (the store, the broker) runs on Starlette's thread pool, never on the
event loop: a slow PostgreSQL or a Redis that is down must not stall every other client.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import DetainError
from . import judge0, runs
from .store import DONE, QueueFull
from .tokens import Caller

BODY_CAP = 8 << 20
RESPONSE_CAP = 16 << 20  # bytes of submission data in one answer; fewer fields or tokens
HEAVY_AT_ONCE = 8  # answers carrying stored outputs built at once (memory: 8 x the cap)
BATCH_CAP = 20
QUEUE_CAP = 256
WAIT_SECONDS = 600.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status, self.body = status, body


def error(status: int, message: str) -> Refused:
    return Refused(status, {"error": message})


class Service:
    """The routes over one store, one token table and one dispatcher (embedded or Celery)."""

    def __init__(self, store, tokens, dispatcher, metrics) -> None:
        self.store, self.tokens, self.dispatcher, self.metrics = store, tokens, dispatcher, metrics
        self._heavy = asyncio.Semaphore(HEAVY_AT_ONCE)

    def app(self) -> Starlette:
        routes = [
            Route("/about", self.about), Route("/config_info", self.config_info),
            Route("/languages", self.languages),
            Route("/languages/{language_id}", self.language),
            Route("/statuses", self.statuses),
            Route("/submissions/batch", self.create_batch, methods=["POST"]),
            Route("/submissions/batch", self.get_batch, methods=["GET"]),
            Route("/submissions", self.create, methods=["POST"]),
            Route("/submissions/{token}", self.get, methods=["GET"]),
            Route("/submissions/{token}", self.delete, methods=["DELETE"]),
            Route("/v1/runs", self.create_run, methods=["POST"]),
            Route("/v1/runs/{token}", self.get_run, methods=["GET"]),
            Route("/healthz", self.healthz), Route("/metrics", self.prometheus),
        ]
        wrapped = [Route(r.path, self._guard(r.endpoint, r.path), methods=list(r.methods or []))
                   for r in routes]
        return Starlette(routes=wrapped)

    def _guard(self, endpoint, path: str):
        """Authentication, rate limit and the error shape, around every route."""
        async def guarded(request: Request) -> Response:
            try:
                if path == "/healthz":
                    return await endpoint(request, None)
                self._same_origin(request)
                caller = self.tokens.caller(request.headers.get("x-auth-token"))
                if caller is None:
                    if not self.tokens.admit(self.tokens.stranger(_client(request))):
                        raise error(429, "too many failed attempts; slow down")
                    raise error(401, "a valid X-Auth-Token header is required")
                if not self.tokens.admit(caller):
                    raise error(429, f"too many requests: at most {caller.rate:g} a second "
                                     "for this token")
                return await endpoint(request, caller)
            except Refused as refused:
                self.metrics.rejected.labels(str(refused.status)).inc()
                return JSONResponse(refused.body, status_code=refused.status)
            except judge0.Invalid as invalid:
                self.metrics.rejected.labels("422").inc()
                return JSONResponse(invalid.errors, status_code=422)
            except Exception as exc:  # a bug in detain: one line here, JSON to the client
                from ..report.safe_text import say

                say(f"serve --http: {request.method} {path} failed: {type(exc).__name__}: "
                    f"{str(exc)[:300]}")
                self.metrics.rejected.labels("500").inc()
                return JSONResponse({"error": "internal error; the server's log says more"},
                                    status_code=500)
        return guarded

    def _same_origin(self, request: Request) -> None:
        """No web page may use the API through the operator's browser. A cross-site page
        sends an Origin header (refused unless it is this server's own); without tokens,
        where the only protection is the loopback address, the Host must be a loopback
        name too, so a DNS-rebinding page cannot pose as this server. POST bodies must be
        application/json, which a page cannot send cross-site without asking first."""
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            raise error(403, "requests from web pages of other origins are refused")
        if not self.tokens.required and host.rpartition(":")[0] not in LOOPBACK_HOSTS:
            raise error(403, "without tokens, only requests to a loopback address (Host: "
                             "127.0.0.1, localhost or [::1]) are served")
        if request.method == "POST" and request.headers.get("content-type", "").split(
                ";")[0].strip().lower() != "application/json":
            raise error(415, "the body must be JSON (Content-Type: application/json)")

    # Judge0: what the server is

    async def about(self, request: Request, caller: Caller) -> Response:
        return JSONResponse({"version": judge0.VERSION, "homepage": "detain",
                             "source_code": "detain", "maintainer": "detain"})

    async def config_info(self, request: Request, caller: Caller) -> Response:
        return JSONResponse(judge0.config_info(caller.ceiling, BATCH_CAP, QUEUE_CAP))

    async def languages(self, request: Request, caller: Caller) -> Response:
        return JSONResponse([{"id": lang["id"], "name": lang["name"]}
                             for lang in judge0.LANGUAGES.values()])

    async def language(self, request: Request, caller: Caller) -> Response:
        wanted = request.path_params["language_id"]
        found = judge0.LANGUAGES.get(int(wanted)) if wanted.isdigit() else None
        if found is None:
            raise error(404, f"language {wanted[:40]!r} not found")
        return JSONResponse(found)

    async def statuses(self, request: Request, caller: Caller) -> Response:
        return JSONResponse([{"id": i, "description": d} for i, d in judge0.STATUSES])

    # Judge0: submissions

    async def create(self, request: Request, caller: Caller) -> Response:
        encoded = _flag(request, "base64_encoded")
        fields = judge0.fields_param(request.query_params.get("fields"))
        body = await _json(request)
        wait = _flag(request, "wait")
        token = await run_in_threadpool(self._accept, body, encoded, caller, not wait)
        if not wait:
            return JSONResponse({"token": token}, status_code=201)
        record = await self._finished(token)
        async with self._heavy:
            return _capped(self._shown(record, fields, encoded), status=201)

    async def create_batch(self, request: Request, caller: Caller) -> Response:
        encoded = _flag(request, "base64_encoded")
        body = await _json(request)
        items = body.get("submissions") if isinstance(body, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= BATCH_CAP:
            raise Refused(422, {"submissions": [f"must be a list of 1 to {BATCH_CAP} "
                                                "submissions"]})
        if not self.tokens.admit(caller, cost=len(items) - 1):  # the request paid for one
            raise error(429, f"too many submissions: at most {caller.rate:g} a second for "
                             "this token, each of a batch counting")
        answers = []
        for item in items:
            try:
                answers.append({"token": await run_in_threadpool(self._accept, item,
                                                                 encoded, caller)})
            except judge0.Invalid as invalid:
                answers.append(invalid.errors)
        return JSONResponse(answers, status_code=201)

    async def get(self, request: Request, caller: Caller) -> Response:
        record = await run_in_threadpool(self._owned, request.path_params["token"], caller,
                                         "judge0")
        fields = judge0.fields_param(request.query_params.get("fields"))
        async with self._heavy:
            return _capped(self._shown(record, fields, _flag(request, "base64_encoded")))

    async def get_batch(self, request: Request, caller: Caller) -> Response:
        asked = [t for t in request.query_params.get("tokens", "").split(",") if t]
        tokens = list(dict.fromkeys(asked))  # each once: repeats only multiplied the answer
        if not 1 <= len(tokens) <= BATCH_CAP:
            raise Refused(422, {"tokens": [f"give 1 to {BATCH_CAP} tokens, comma-separated"]})
        fields = judge0.fields_param(request.query_params.get("fields"))
        encoded = _flag(request, "base64_encoded")
        async with self._heavy:
            found = await run_in_threadpool(self.store.many, tokens)
            shown: dict[str, dict[str, Any]] = {}
            size = 0
            for token in asked[:BATCH_CAP]:  # in the order asked, repeats counted
                record = found.get(token)
                if token not in shown and record and record["owner"] == caller.name \
                        and record["kind"] == "judge0":
                    shown[token] = self._shown(record, fields, encoded)
                size += _size(shown.get(token) or {})
                if size > RESPONSE_CAP:
                    raise _too_big()
            return JSONResponse({"submissions": [shown.get(t) for t in asked[:BATCH_CAP]]})

    async def delete(self, request: Request, caller: Caller) -> Response:
        record = await run_in_threadpool(self._owned, request.path_params["token"], caller,
                                         "judge0")
        if record["state"] != DONE:
            raise error(400, "the submission is still queued or running; delete it once it "
                             "has finished")
        fields = judge0.fields_param(request.query_params.get("fields"))
        await run_in_threadpool(self.store.delete, record["token"])
        return JSONResponse(self._shown(record, fields, _flag(request, "base64_encoded")))

    def _accept(self, body: Any, encoded: bool, caller: Caller, durable: bool = True) -> str:
        judge0.parse(body, encoded, caller.ceiling)  # a 422 now, not a failed run later
        request = {"body": body, "encoded": encoded}
        if isinstance(body.get("callback_url"), str):
            reason = self.dispatcher.callback_refused(body["callback_url"])
            if reason is not None:
                raise judge0.Invalid({"callback_url": [reason]})
            request["callback_url"] = body["callback_url"]
        return self._store(request, "judge0", caller, durable)

    def _store(self, request: dict[str, Any], kind: str, caller: Caller,
               durable: bool = True) -> str:
        """Store an accepted submission and dispatch it. Not `durable` for a client that
        waits: the result's durable write, which comes after this one (through the same
        writer embedded, later in PostgreSQL's log scaled out), before the client is
        answered, covers it. The row is committed all the same, for workers to read."""
        if self.dispatcher.backlog() >= QUEUE_CAP:
            raise error(503, f"the queue is full ({QUEUE_CAP} submissions waiting); try again "
                             "later")
        token = str(uuid.uuid4())
        try:
            added = self.store.add(token, kind, caller.name, request, most=caller.queue,
                                   durable=durable)
        except QueueFull:
            raise error(429, f"this token already has {caller.queue} submissions waiting or "
                             "running; wait for their results") from None
        self.metrics.accepted.labels(kind).inc()
        self.dispatcher.accept(token, added)
        return token

    def _owned(self, token: str, caller: Caller, kind: str) -> dict[str, Any]:
        record = self.store.get(token) if len(token) <= 64 else None
        if record is None or record["owner"] != caller.name or record["kind"] != kind:
            raise error(404, "no such submission")
        return record

    async def _finished(self, token: str) -> dict[str, Any]:
        record = await asyncio.wait_for(self.dispatcher.result(token), WAIT_SECONDS)
        if record is None:
            raise error(404, "the submission is gone: deleted while it ran, or lost with a "
                             "database that crashed before its result was stored; send it "
                             "again")
        return record

    @staticmethod
    def _shown(record: dict[str, Any], fields: tuple[str, ...], encoded: bool) -> dict:
        request = record["request"]
        body = request["body"]
        values = {k: body.get(k) for k in judge0.ALL_FIELDS if k in body}
        for name in ("source_code", "stdin", "expected_output"):
            values[name] = judge0.decode(body.get(name), name, request["encoded"])
        values.update(record["response"] or {"status_id": 2 if record["state"] == "running"
                                              else 1})
        values.update(token=record["token"], created_at=record["created_at"],
                      finished_at=record["finished_at"])
        return judge0.view(values, fields, encoded)

    # detain's own API

    async def create_run(self, request: Request, caller: Caller) -> Response:
        body = await _json(request)
        try:
            runs.parse(body, caller.ceiling)
        except DetainError as exc:
            raise error(422, str(exc)) from None
        token = await run_in_threadpool(self._store, {"body": body}, "run", caller)
        if not _flag(request, "wait"):
            return JSONResponse({"id": token}, status_code=201)
        record = await self._finished(token)
        return JSONResponse(_run_view(record), status_code=201)

    async def get_run(self, request: Request, caller: Caller) -> Response:
        record = await run_in_threadpool(self._owned, request.path_params["token"], caller, "run")
        shape = request.query_params.get("format", "json")
        response = record["response"]
        if shape == "json" or response is None or "report" not in response:
            return JSONResponse(_run_view(record))
        if shape == "sarif":
            from ..report.sarif import to_sarif

            return JSONResponse(to_sarif(response["report"]))
        if shape == "html":
            from ..report.html import to_html

            return HTMLResponse(to_html(response["report"]))
        raise error(400, "format must be json, sarif or html")

    async def healthz(self, request: Request, caller: Caller | None) -> Response:
        healthy, detail = await run_in_threadpool(self.dispatcher.health)
        return JSONResponse({"ok": healthy, **detail}, status_code=200 if healthy else 503)

    async def prometheus(self, request: Request, caller: Caller) -> Response:
        return PlainTextResponse(generate_latest(self.metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")


def _size(shown: dict[str, Any]) -> int:
    """Bytes of the text values of one shown submission (what dominates its JSON)."""
    return sum(len(v) for v in shown.values() if isinstance(v, str))


def _too_big() -> Refused:
    return error(413, f"the answer would hold more than {RESPONSE_CAP >> 20} MiB of "
                      "submission data; ask for fewer fields or tokens")


def _capped(shown: dict[str, Any], status: int = 200) -> Response:
    if _size(shown) > RESPONSE_CAP:
        raise _too_big()
    return JSONResponse(shown, status_code=status)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _run_view(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record["token"], "state": record["state"], "created_at": record["created_at"],
            "finished_at": record["finished_at"], **(record["response"] or {})}


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("true", "1", "yes")


async def _json(request: Request) -> Any:
    """The body as JSON, refused before it is read in full when it is too big."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > BODY_CAP):
        raise error(413, f"the body is larger than {BODY_CAP >> 20} MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_CAP:
            raise error(413, f"the body is larger than {BODY_CAP >> 20} MiB")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise error(400, "the body is not valid JSON") from None
