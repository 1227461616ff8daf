"""`ftvs serve` for real: a uvicorn server on 127.0.0.1 (a free port) serving the contenders of a tiny real
study (TF-IDF and a one-block from-scratch model, tests/study_tiny.py), answered over HTTP; its page in
headless Chromium; a small load test; SIGTERM with a request in flight; the command's one-line errors."""

import asyncio
import json
import random
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from browser import CHROMIUM, Browser
from serving import Server, load_test
from study_tiny import tiny_study_yaml
from tiny_runs import INTENTS, assert_one_line_error

from ftvs import rundir
from ftvs.cli import main
from ftvs.evaluate import load_predictor
from ftvs.serve.batcher import MicroBatcher
from ftvs.serve.models import study_runs

TEXTS = [*INTENTS.values(), "where is my money", "the app now says my card is blocked, why?", "pin"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two runs (TF-IDF and scratch, two epochs), as `ftvs study` writes them."""
    root = tmp_path_factory.mktemp("serve")
    cfg = tiny_study_yaml(root, epochs=2, seeds=(0,))
    assert main(["study", str(cfg), "--output_dir", str(root / "study")]) == 0
    return root / "study"


@pytest.fixture(scope="module")
def server(study):
    with Server("--study", str(study), "--max_wait_ms", "20") as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_study_serves_each_arm_with_its_scores(study, http):
    runs = study_runs(study)
    assert {name: path.name for name, path in runs.items()} == {
        "tfidf": "tfidf-f1-s0",
        "scratch": "scratch-f1-s0",
    }
    models = {m["name"]: m for m in http.get("/models").json()["models"]}
    assert list(models) == ["tfidf", "scratch"]
    for name, run in runs.items():
        metrics = rundir.read_metrics(run)
        m = models[name]
        assert (m["arm"], m["method"]) == (metrics["arm"], metrics["method"])
        assert m["test"]["macro_f1"] == metrics["test"]["macro_f1"]
        assert m["params"] == metrics["params"] and m["precision"] == "no"
        assert m["inference_cost"]["seconds_per_1000"] == metrics["inference"]["seconds_per_1000"]
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["models"] == 2


def test_predict_answers_as_ftvs_predict_does(study, http):
    r = http.post("/predict", json={"texts": TEXTS, "model": "all", "top_k": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [row["text"] for row in results] == TEXTS
    for name, run in study_runs(study).items():
        predictor = load_predictor(run)
        probs = predictor.probs(TEXTS)
        for row, p in zip(results, probs):
            answer = row["predictions"][name]
            order = np.argsort(-p)[:3]
            assert [t["label"] for t in answer["top_k"]] == [predictor.label_names[i] for i in order]
            assert [t["probability"] for t in answer["top_k"]] == pytest.approx(p[order], abs=1e-5)
            assert answer["label"] == answer["top_k"][0]["label"]
            assert answer["latency_ms"] > 0 and answer["batch_size"] >= len(TEXTS)
    one = http.post("/predict", json={"texts": TEXTS[:1], "model": "scratch", "top_k": 10}).json()
    (answer,) = one["results"][0]["predictions"].values()
    assert len(answer["top_k"]) == 4  # top_k beyond the label count gives every label
    assert sum(t["probability"] for t in answer["top_k"]) == pytest.approx(1, abs=1e-5)


def test_concurrent_requests_are_micro_batched_to_the_same_answers(server, http):
    alone = {t: http.post("/predict", json={"texts": [t]}).json()["results"][0]["predictions"] for t in TEXTS}

    async def together():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            rs = await asyncio.gather(*(client.post("/predict", json={"texts": [t]}) for t in TEXTS * 3))
            return [r.json()["results"][0] for r in rs]

    rows = asyncio.run(together())
    assert max(p["batch_size"] for row in rows for p in row["predictions"].values()) > 1
    for row in rows:
        for name, answer in row["predictions"].items():
            expected = alone[row["text"]][name]
            assert answer["label"] == expected["label"]
            assert answer["probability"] == pytest.approx(expected["probability"], abs=1e-5)


def test_micro_batches_hold_at_most_max_batch_texts_and_keep_requests_whole(study):
    predictor = load_predictor(study_runs(study)["scratch"])
    sizes = []

    def predict(texts):
        sizes.append(len(texts))
        return predictor.probs(texts)

    async def requests(counts):
        batcher = MicroBatcher(predict, max_batch=4, max_wait_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(TEXTS[:n]) for n in counts))
        finally:
            await batcher.stop()

    counts = (3, 3, 1, 6, 2)
    answers = asyncio.run(requests(counts))
    # 3 | 3 + 1 (the second 3 did not fit the first batch) | 6 alone (larger than max_batch) | 2
    assert sizes == [3, 4, 6, 2]
    assert [timing["batch_size"] for _, timing in answers] == [3, 4, 4, 6, 2]
    for n, (probs, _) in zip(counts, answers):
        np.testing.assert_allclose(probs, predictor.probs(TEXTS[:n]), atol=1e-6)


LONG = "x" * 10_001
BAD = [
    (b'{"texts": ["a"', 400, "not valid JSON"),
    (b"\xff\xfe\x00", 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b"{}", 422, "texts: field required"),
    (b'{"texts": []}', 422, "texts is empty"),
    (b'{"texts": "a text"}', 422, "texts: input should be a valid list"),
    (b'{"texts": ["a", 3]}', 422, "texts[1]: input should be a valid string"),
    (b'{"texts": ["   "]}', 422, "texts[0] is empty"),
    (b'{"texts": ["\\ud800"]}', 422, "lone surrogate"),
    (b'{"texts": ["a"], "top_k": 0}', 422, "top_k: input should be greater than or equal to 1"),
    (b'{"texts": ["a"], "modle": "tfidf"}', 422, "unknown field 'modle'"),
    (b'{"texts": ["a"], "model": "tfid"}', 404, "unknown model 'tfid' (did you mean 'tfidf'?)"),
    (json.dumps({"texts": ["a"] * 257}).encode(), 413, "257 texts, more than the 256 allowed"),
    (json.dumps({"texts": ["a", LONG]}).encode(), 413, "texts[1] has 10,001 bytes"),
    (b"[" * 100_000, 400, "not valid JSON"),
    (b" " * 16_000_000, 413, "the body has 16,000,000 bytes"),
]


@pytest.mark.parametrize("body,status,needle", BAD, ids=[f"{s}-{n[:24]}" for _, s, n in BAD])
def test_bad_requests_get_a_4xx_with_one_line(http, body, status, needle):
    r = http.post("/predict", content=body, headers={"content-type": "application/json"})
    detail = r.json()["detail"]
    assert r.status_code == status and needle in detail and "\n" not in detail, (r.status_code, detail)


def test_no_mangled_request_gets_a_500(http):
    """Valid bodies cut, with bytes replaced or inserted, fields of every JSON type: a 200 or a 4xx."""
    rng = random.Random(0)
    good = json.dumps({"texts": ["my card was declined", "pin"], "model": "tfidf", "top_k": 2}).encode()
    values = [
        None,
        True,
        0,
        -1,
        2**70,
        1.5,
        "",
        "x",
        [],
        [""],
        ["a", None],
        {},
        {"texts": ["a"]},
        "\u0000",
        ["\u0000"],
        ["😀 \u202e"],
    ]
    bodies = []
    for _ in range(60):
        b = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            op = rng.choice(("cut", "flip", "insert"))
            if op == "cut":
                del b[i:]
            elif op == "flip":
                b[i : i + 1] = bytes([rng.randrange(256)])
            else:
                b[i:i] = rng.choice([b"{", b"]", b'"', b"\\", b"\xff", b",", b"null"])
            if not b:
                break
        bodies.append(bytes(b))
    for field in ("texts", "model", "top_k"):
        for v in values:
            bodies.append(json.dumps({"texts": ["a"], field: v}).encode())
    bodies.append(b'{"texts": ["a"], "top_k": 1' + b"0" * 5000 + b"}")
    for body in bodies:
        r = http.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200 or 400 <= r.status_code < 500, (body, r.status_code, r.text)
        if r.status_code != 200:
            assert "\n" not in r.json()["detail"], r.text


def test_page_docs_and_unknown_paths(http):
    page = http.get("/")
    assert (
        page.status_code == 200
        and "/static/app.js" in page.text
        and "http" not in page.text.split("<body>")[1]
    )
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = http.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere
    assert http.get("/static/../x").status_code == 404 and http.get("/nowhere").status_code == 404
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()["paths"]
    assert {"/predict", "/models", "/health"} <= set(spec)
    assert (
        "texts"
        in spec["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )


def test_small_load_has_no_errors(server):
    r = load_test(server.url, TEXTS, requests=240, clients=16, limit_s=120)
    assert r["requests"] == 240 and r["errors"] == 0, r["first_errors"]


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not installed (Debian package `chromium`); the page check needs a real browser",
)
def test_page_in_headless_chromium_shows_every_model_side_by_side(http, server, tmp_path):
    text = "how do I change the pin of my card"
    expected = http.post("/predict", json={"texts": [text]}).json()["results"][0]["predictions"]
    models = {m["name"]: m for m in http.get("/models").json()["models"]}
    with Browser(tmp_path / "profile", width=390, height=844) as b:  # a phone's width
        b.goto(server.url + "/")
        b.wait_for("document.querySelectorAll('.card').length === 2")
        b.type_into("#text", text)
        b.click("#submit")
        b.wait_for("[...document.querySelectorAll('.card .label')].every(e => e.textContent !== '–')")
        cards = b.js(
            "[...document.querySelectorAll('.card')].map(c => ({name: c.dataset.model, "
            "label: c.querySelector('.label').textContent, f1: c.querySelector('.f1').textContent, "
            "bars: [...c.querySelectorAll('.bar')].map(x => [x.querySelector('span').textContent, "
            "x.querySelector('.p').textContent, x.querySelector('.fill').style.width]), "
            "latency: c.querySelector('.latency').textContent, width: c.getBoundingClientRect().width}))"
        )
        assert b.js("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        shot = b.screenshot(tmp_path / "page.png")
    assert [c["name"] for c in cards] == list(models)
    for c in cards:
        answer = expected[c["name"]]
        assert c["label"] == answer["label"]
        assert c["f1"] == f"test macro-F1 {models[c['name']]['test']['macro_f1']:.4f}"
        assert [bar[0] for bar in c["bars"]] == [t["label"] for t in answer["top_k"]]
        assert [bar[1] for bar in c["bars"]] == [f"{100 * t['probability']:.1f}%" for t in answer["top_k"]]
        assert c["latency"].startswith("latency ") and c["latency"].endswith(" ms (batch of 1)")
        assert 300 < c["width"] <= 390
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape[1] == 390 and img.shape[0] >= 844 and shot.stat().st_size > 10_000
    assert 0.01 < (img < 200).mean() < 0.5 and img.std() > 20  # neither blank nor a dark error page


def test_sigterm_lets_the_request_in_flight_finish(study):
    run = study_runs(study)["tfidf"]
    server = Server(str(run), "--max_wait_ms", "3000")  # a lone request waits 3 s for company
    answer = {}

    def ask():
        answer["r"] = httpx.post(server.url + "/predict", json={"texts": ["my card"]}, timeout=60)

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(1.0)
    started = time.monotonic()
    server.terminate()
    asker.join(60)
    assert server.stop() == 0
    assert answer["r"].status_code == 200 and answer["r"].json()["results"][0]["predictions"]["tfidf-f1-s0"]
    assert time.monotonic() - started > 1.0  # it waited for the request rather than dropping it
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health")


def test_bad_command_lines_are_one_line_errors(study, tmp_path, capsys):
    run = str(study_runs(study)["tfidf"])
    assert_one_line_error(capsys, ["serve"], "no model to serve")
    assert_one_line_error(capsys, ["serve", str(tmp_path)], "holds no trained model")
    assert_one_line_error(capsys, ["serve", "--study", str(tmp_path)], "holds no study.json")
    assert_one_line_error(capsys, ["serve", run, run], "served twice")
    assert_one_line_error(capsys, ["serve", run, "--max_batch", "0"], "--max_batch 0 must be at least 1")
    assert_one_line_error(capsys, ["serve", run, "--port", "70000"], "is not a port")
    scratch = str(study_runs(study)["scratch"])
    assert_one_line_error(capsys, ["serve", scratch, "--onnx", "--port", "0"], "run `ftvs export")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(
            capsys, ["serve", run, "--port", str(port)], f"cannot listen on 127.0.0.1:{port}"
        )
