"""The reader web app (Starlette): one token link per reader, nothing readable or writable without one.

Routes (``TOKEN`` is the reader's token; any other token gets 403 before anything is read or written)::

    GET       /r/TOKEN/                 reader page        GET  /r/TOKEN/static/{reader.js,reader.css}
    GET       /r/TOKEN/api/items        reading list, progress, saved answers (no method names)
    PUT/POST  /r/TOKEN/api/answers/ID   save (upsert) the answer to item ID; 400 on bad values
    GET       /r/TOKEN/img/ALIAS        float32 pixels of an image of this reader's list, by the reader's alias

No route takes a file path from the client: images are looked up by alias in the study, static files
by name in a fixed list.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import AnswerError
from .store import AnswerStore, is_complete, row_to_payload, validate_answer
from .study import SCALE, Study, load_study

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {"reader.js": "text/javascript", "reader.css": "text/css"}
MAX_BODY = 4096
_SECURITY_HEADERS = {
    b"referrer-policy": b"no-referrer",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"cache-control": b"no-store",
    b"content-security-policy": b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


class _SecurityHeaders:
    """Adds no-referrer (the token is in the URL), no-store, nosniff and a strict CSP to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _SECURITY_HEADERS]
                message["headers"] = headers + list(_SECURITY_HEADERS.items())
            await send(message)

        await self.app(scope, receive, wrapped if scope["type"] == "http" else send)


def _forbidden() -> Response:
    return PlainTextResponse("403: a valid reader token link is needed", status_code=403)


def create_app(study_dir: str | Path) -> Starlette:
    """The reader app for one study folder; the study and its database are checked here, before serving.

    Raises:
        StudyFormatError, StudyVersionError, CorruptDatabaseError: the folder cannot be served.
    """
    study = load_study(study_dir)
    store = AnswerStore(study)
    lists = {reader: study.reader_items(reader) for reader in study.readers}
    aliases = {
        reader: {a: n for item in items for a, n in zip(item.aliases, item.images, strict=True)}
        for reader, items in lists.items()
    }

    def reader_of(request: Request) -> str | None:
        token = request.path_params.get("token", "")
        return study.reader_for_token(token) if isinstance(token, str) and 0 < len(token) <= 128 else None

    async def root(request: Request) -> Response:
        return _forbidden()

    async def page_redirect(request: Request) -> Response:
        if reader_of(request) is None:
            return _forbidden()
        return RedirectResponse(f"/r/{request.path_params['token']}/", status_code=307)

    async def page(request: Request) -> Response:
        if reader_of(request) is None:
            return _forbidden()
        return FileResponse(STATIC_DIR / "reader.html", media_type="text/html")

    async def static(request: Request) -> Response:
        if reader_of(request) is None:
            return _forbidden()
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return PlainTextResponse("404: not found", status_code=404)
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    async def items(request: Request) -> Response:
        reader = reader_of(request)
        if reader is None:
            return _forbidden()
        return JSONResponse(reading_list(study, store, reader, lists[reader]))

    async def answer(request: Request) -> Response:
        reader = reader_of(request)
        if reader is None:
            return _forbidden()
        item_id = request.path_params["item"]
        kinds = {item.id: item.kind for item in lists[reader]}
        if item_id not in kinds:
            return JSONResponse({"error": "no such item in this reading list"}, status_code=404)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return JSONResponse({"error": f"answers are at most {MAX_BODY} bytes"}, status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": f"answers are at most {MAX_BODY} bytes"}, status_code=413)
        try:
            payload = json.loads(body)
            row = validate_answer(kinds[item_id], payload)
        except (ValueError, AnswerError) as exc:  # JSONDecodeError is a ValueError
            return JSONResponse({"error": f"bad answer: {exc}"}, status_code=400)
        store.save(reader, item_id, row)
        done = store.answers(reader)
        answered = sum(is_complete(item.kind, done.get((reader, item.id))) for item in lists[reader])
        return JSONResponse({"saved": True, "complete": is_complete(kinds[item_id], row), "answered": answered})

    async def image(request: Request) -> Response:
        reader = reader_of(request)
        if reader is None:
            return _forbidden()
        name = aliases[reader].get(request.path_params["alias"])
        if name is None:
            return PlainTextResponse("404: not found", status_code=404)
        return FileResponse(study.image_path(name), media_type="application/octet-stream")

    routes = [
        Route("/", root),
        Route("/r/{token}", page_redirect),
        Route("/r/{token}/", page),
        Route("/r/{token}/static/{name}", static),
        Route("/r/{token}/api/items", items),
        Route("/r/{token}/api/answers/{item}", answer, methods=["PUT", "POST"]),
        Route("/r/{token}/img/{alias}", image),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_SecurityHeaders)
    app.state.study = study
    return app


def reading_list(study: Study, store: AnswerStore, reader: str, items: list) -> dict[str, Any]:
    """The reader's list as the page needs it: no method names, no image names, only the reader's aliases."""
    done = store.answers(reader)
    out = []
    for item in items:
        row = done.get((reader, item.id))
        images = []
        for alias, name in zip(item.aliases, item.images, strict=True):
            rows, cols = study.image_shape(name)
            images.append({"url": f"img/{alias}", "rows": rows, "cols": cols})
        out.append(
            {
                "id": item.id,
                "kind": item.kind,
                "images": images,
                "answer": row_to_payload(row) if row else None,
                "complete": is_complete(item.kind, row),
            }
        )
    complete = [entry["complete"] for entry in out]
    resume = complete.index(False) if False in complete else max(len(out) - 1, 0)
    return {
        "reader": reader,
        "total": len(out),
        "answered": sum(complete),
        "resume": resume,
        "rubric": study.data["rubric"],
        "scale": {str(k): v for k, v in SCALE.items()},
        "items": out,
    }


def reader_links(study: Study, base_url: str) -> dict[str, str]:
    """Each reader's token link under ``base_url`` (e.g. ``http://127.0.0.1:8765``)."""
    return {reader: f"{base_url.rstrip('/')}/r/{study.token(reader)}/" for reader in study.readers}


@contextlib.contextmanager
def serve_in_background(study_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve the study with uvicorn in a thread (port 0: a free one); yields the base URL; stops on exit."""
    import uvicorn

    config = uvicorn.Config(create_app(study_dir), host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the review server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
