"""The FastAPI app of `ftvs serve`: POST /predict, GET /models, GET /health, the page at / and the
OpenAPI docs at /docs.

Every bad request is answered with a 4xx and `{"detail": "one line"}` that names the problem and the
fix: 400 a body that is not JSON, 422 a body of the wrong shape (missing, empty or non-string texts,
unknown fields, top_k < 1), 413 too large (more than `max_texts` texts, a text over `max_text_bytes`
bytes of UTF-8, a body over the size that allows), 404 an unknown model. A 500 means a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from importlib import resources

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ftvs import __version__
from ftvs.errors import closest
from ftvs.serve import MAX_TEXT_BYTES, MAX_TEXTS
from ftvs.serve.batcher import MicroBatcher

ALL = "all"
SHAPE = 'send {"texts": ["a text", ...], "model": "all" or a name, "top_k": 3}'
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="the texts to classify (at least one)")
    model: str = Field(ALL, description='a model name from GET /models, or "all" for every model')
    top_k: int = Field(3, ge=1, description="how many of the most probable labels to return per text")


class Limits:
    def __init__(self, max_texts: int = MAX_TEXTS, max_text_bytes: int = MAX_TEXT_BYTES):
        self.max_texts = max_texts
        self.max_text_bytes = max_text_bytes
        # JSON may escape a character into 6 bytes (\uXXXX); room for the rest of the document
        self.max_body_bytes = 64_000 + 6 * max_texts * max_text_bytes


def _reject(status: int, message: str):
    raise HTTPException(status_code=status, detail=message)


def _field(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    where = _field(err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r}; the fields are texts, model, top_k"
    if not where:
        return f"the body must be a JSON object; {SHAPE}"
    return f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}; {SHAPE}"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        _reject(
            413, f"the body has {int(declared):,} bytes, more than the {limit:,} allowed; send fewer texts"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            _reject(413, f"the body is over the {limit:,} bytes allowed; send fewer texts")
    return bytes(body)


def parse_request(body: bytes, limits: Limits, names: list[str]) -> PredictRequest:
    """The request, or an HTTPException with a one-line message."""
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as e:
        _reject(400, f"the body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {SHAPE}")
    except ValueError as e:  # not UTF-8/16/32, or a number of too many digits
        _reject(400, f"the body is not valid JSON ({str(e).splitlines()[0][:160]}); {SHAPE}")
    except RecursionError:
        _reject(400, f"the body is not valid JSON that can be read: nested too deeply; {SHAPE}")
    try:
        req = PredictRequest.model_validate(doc)
    except ValidationError as e:
        _reject(422, _validation_message(e))
    if not req.texts:
        _reject(422, 'texts is empty; send at least one text, e.g. {"texts": ["my card was declined"]}')
    if len(req.texts) > limits.max_texts:
        _reject(
            413,
            f"{len(req.texts):,} texts, more than the {limits.max_texts:,} allowed per request; split them",
        )
    for i, text in enumerate(req.texts):
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            _reject(422, f"texts[{i}] is not valid Unicode (a lone surrogate); send UTF-8 text")
        if size > limits.max_text_bytes:
            _reject(
                413,
                f"texts[{i}] has {size:,} bytes of UTF-8, more than the {limits.max_text_bytes:,} "
                "allowed; shorten it",
            )
        if not text.strip():
            _reject(422, f"texts[{i}] is empty; send text to classify")
    if req.model != ALL and req.model not in names:
        _reject(
            404,
            f"unknown model {req.model!r}{closest(req.model, names)}; the models are "
            f"{', '.join(names)} or {ALL!r}",
        )
    return req


def _top(probs: np.ndarray, labels: list[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": labels[i], "probability": round(float(probs[i]), 6)} for i in order]


def create_app(models, limits: Limits, max_batch: int = 64, max_wait_ms: float = 5.0) -> FastAPI:
    """The app over loaded `ServedModel`s; each model gets its micro-batcher when the server starts."""
    by_name = {m.name: m for m in models}
    batchers: dict[str, MicroBatcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for m in models:
            batchers[m.name] = MicroBatcher(m.predictor.probs, max_batch, max_wait_ms)
            batchers[m.name].start()
        yield
        for b in batchers.values():  # after uvicorn let the requests in flight finish
            await b.stop()

    app = FastAPI(
        title="ftvs serve",
        version=__version__,
        description="Text classification with the runs of an ftvs study, side by side.",
        lifespan=lifespan,
    )
    started = time.time()

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):  # never from user input: those are 4xx above
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); please report it"}, 500)

    @app.post(
        "/predict",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
        summary="classify texts with one model or all of them",
    )
    async def predict(request: Request):
        body = await _read_body(request, limits.max_body_bytes)
        req = parse_request(body, limits, list(by_name))
        names = list(by_name) if req.model == ALL else [req.model]
        answers = await asyncio.gather(*(batchers[n].submit(req.texts) for n in names))
        labels = [by_name[n].predictor.label_names for n in names]
        # serialised here: FastAPI's encoder would walk the answer again, at a cost per request that
        # micro-batching cannot share
        return Response(json.dumps(_answer(req, names, labels, answers)), media_type="application/json")

    @app.get("/models", summary="the served models: arm, method, test scores, size, precision, cost")
    async def list_models():
        return {"models": [m.info for m in models]}

    @app.get("/health", summary="liveness: the models are loaded and the batchers run")
    async def health():
        alive = all(b.task is not None and not b.task.done() for b in batchers.values())
        return JSONResponse(
            {
                "status": "ok" if alive else "failing",
                "models": len(models),
                "uptime_s": round(time.time() - started, 1),
            },
            200 if alive else 503,
        )

    _add_page(app)
    return app


def _answer(req: PredictRequest, names, labels, answers) -> dict:
    """POST /predict's answer: per text and model the label, the top k and the model's latency."""
    results = [{"text": t, "predictions": {}} for t in req.texts]
    for name, names_of_labels, (probs, timing) in zip(names, labels, answers):
        for row, p in zip(results, probs):
            top = _top(p, names_of_labels, min(req.top_k, len(names_of_labels)))
            row["predictions"][name] = {
                "label": top[0]["label"],
                "probability": top[0]["probability"],
                "top_k": top,
                "latency_ms": round(timing["latency_ms"], 3),
                "batch_size": timing["batch_size"],
            }
    return {"model": req.model, "results": results}


def _add_page(app: FastAPI) -> None:
    """The page at / and its two files: plain HTML, CSS and JavaScript shipped in the package."""
    page = resources.files("ftvs.serve").joinpath("static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page.joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC:
            _reject(404, f"no file {name!r}")
        return Response(page.joinpath(name).read_text(encoding="utf-8"), media_type=STATIC[name])
