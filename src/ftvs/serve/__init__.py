"""`ftvs serve RUN [RUN ...] | --study STUDY_DIR`: the trained runs behind an HTTP API and a page.

    models   which runs are served (run folders, or a study's contenders), loaded once, described
    batcher  per-model micro-batching of concurrent requests
    app      the FastAPI app: POST /predict, GET /models, GET /health, the page at /, /docs
    static/  the page: plain HTML, CSS and JavaScript, no build step and nothing fetched from elsewhere

FastAPI and uvicorn are the optional extra `serve` (`pip install 'ftvs[serve]'`).
"""

from __future__ import annotations

import argparse
import signal
import socket

from ftvs.errors import FtvsError

MAX_TEXTS = 256  # per request (--max_texts)
MAX_TEXT_BYTES = 10_000  # per text, in bytes of UTF-8 (--max_text_bytes)


def _require_serve():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise FtvsError(f"ftvs serve needs {e.name}; pip install 'ftvs[serve]' (fastapi, uvicorn)") from None


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the models load: a port in use is reported at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise FtvsError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _check_args(args) -> None:
    for flag, value, low in (
        ("--max_batch", args.max_batch, 1),
        ("--max_wait_ms", args.max_wait_ms, 0),
        ("--max_texts", args.max_texts, 1),
        ("--max_text_bytes", args.max_text_bytes, 1),
    ):
        if value < low:
            raise FtvsError(f"{flag} {value:g} must be at least {low}")
    if not 0 <= args.port <= 65535:
        raise FtvsError(f"--port {args.port} is not a port; use 1-65535 (0: any free port)")


def cmd_serve(args) -> int:
    _check_args(args)
    _require_serve()
    import uvicorn

    from ftvs.serve.app import Limits, create_app
    from ftvs.serve.models import load_models, named_runs

    runs = named_runs(args.runs, args.study)
    sock = _listen(args.host, args.port)
    try:
        models = load_models(runs, args.max_batch, onnx=args.onnx)
    except BaseException:
        sock.close()
        raise
    app = create_app(models, Limits(args.max_texts, args.max_text_bytes), args.max_batch, args.max_wait_ms)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    for m in models:
        f1 = (m.info["test"] or {}).get("macro_f1")
        kind = " ".join(filter(None, (m.info["arm"], m.info["method"])))
        score = "-" if f1 is None else f"{f1:.4f}"
        print(
            f"  {m.name}: {kind} ({m.predictor.engine}, precision {m.predictor.precision}), "
            f"test macro-F1 {score} <- {m.run_dir}"
        )
    print(
        f"serving {len(models)} models on http://{shown}:{port} (page /, API /predict, docs /docs); "
        "Ctrl+C or SIGTERM stops after the requests in flight",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=None)
    stopped_by = []
    # uvicorn answers SIGTERM/SIGINT by letting the requests in flight finish, then re-sends the signal to
    # the handlers it found: these, so that a graceful stop ends with status 0 rather than a kill
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped_by.append(signal.Signals(number).name))
    uvicorn.Server(config).run(sockets=[sock])
    print(f"stopped{' by ' + stopped_by[0] if stopped_by else ''}; the requests in flight were answered")
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve trained runs over HTTP: a JSON API and a page that shows every model side by side",
        description="Load each run once (a TF-IDF baseline, from-scratch or fine-tuned run) and answer "
        'POST /predict {"texts": [...], "model": NAME|"all", "top_k": 3}, GET /models, GET /health; '
        "a page at / compares the models on a text, and /docs holds the OpenAPI docs. Concurrent "
        "requests are micro-batched per model. Needs `pip install 'ftvs[serve]'`.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders to serve (named after their folders)")
    p.add_argument(
        "--study",
        metavar="STUDY_DIR",
        help="serve a study's contenders: per arm of its main comparison, the run of the lowest seed",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0: any free port)")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="run the neural models' exported graphs (RUN/export/model.onnx from `ftvs export`) with "
        "ONNX Runtime",
    )
    p.add_argument(
        "--max_batch",
        "--max-batch",
        type=int,
        default=64,
        help="most texts one model predicts at once (default %(default)s; 1: one text at a time)",
    )
    p.add_argument(
        "--max_wait_ms",
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a model waits for more requests to batch with the first (default %(default)s)",
    )
    p.add_argument(
        "--max_texts",
        "--max-texts",
        type=int,
        default=MAX_TEXTS,
        help="most texts per request (default %(default)s)",
    )
    p.add_argument(
        "--max_text_bytes",
        "--max-text-bytes",
        type=int,
        default=MAX_TEXT_BYTES,
        help="longest text accepted, in bytes of UTF-8 (default %(default)s)",
    )
    p.set_defaults(func=cmd_serve)
    return p
