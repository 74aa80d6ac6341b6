"""The GPU worker: micro-batching, equivalence, failure isolation, queue limits, timeouts, drain,
disconnects. Slowness and failures come from the synthetic `tiny` model's test-only fault marker, inside
real pipeline calls (see server/synthetic.py); the worker has no fault code of its own."""

from __future__ import annotations

import base64
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from server.schemas import GenerationOptions
from server.validation import text_job
from server.worker import batch_waves, estimate_wait
from tests.server.helpers import FAST, FAULT, assert_batch_equivalent, auth, png_bytes, sample_image, wait_until
from tests.server.test_routes_ops import metric

STALL = f"{FAULT}:stall"  # 0.2 s per step, inside the real pipeline call


def post(client, prompt: str, **parameters):
    return client.post("/", json={"inputs": prompt, "parameters": {**FAST, **parameters}})


def occupy(client, pool: ThreadPoolExecutor, steps: int = 4):
    """Start a slow request and return once the worker is busy with it."""
    worker = client.app.state.worker
    future = pool.submit(post, client, STALL, num_inference_steps=steps)
    wait_until(lambda: worker.in_flight == 1)
    return future


def queue_concurrently(client, pool: ThreadPoolExecutor, bodies: list[dict], expected_depth: int):
    futures = [pool.submit(post, client, **body) for body in bodies]
    wait_until(lambda: client.app.state.worker.queue_depth == expected_depth)
    return futures


def test_compatible_requests_are_batched_and_match_their_solo_results(client):
    prompts = [("a red fox", 1), ("a blue whale", 2), ("green hills", 3)]
    with ThreadPoolExecutor(8) as pool:
        blocker = occupy(client, pool)
        futures = queue_concurrently(client, pool, [{"prompt": p, "seed": s} for p, s in prompts], 3)
        assert blocker.result().status_code == 200
        batched = [f.result() for f in futures]
    text = client.get("/metrics").text
    assert metric(text, "sdxl_batch_size_bucket", le="2.0") == 1  # the blocker ran alone
    assert metric(text, "sdxl_batch_size_bucket", le="3.0") == 2  # ...and the three together
    for (prompt, seed), response in zip(prompts, batched, strict=True):
        assert response.status_code == 200
        assert response.headers["x-seed"] == str(seed)
        assert_batch_equivalent(response.content, post(client, prompt, seed=seed).content)


def test_incompatible_requests_are_not_batched_and_order_is_kept(client):
    worker = client.app.state.worker
    settings, pipes = worker.settings, worker.pipelines

    def job(prompt, **options):
        return text_job(settings, pipes, GenerationOptions(**{**FAST, **options}), prompt)

    jobs = [job("a", seed=1), job("b", seed=2, num_inference_steps=3), job("c", seed=3),
            job("d", seed=4, scheduler="DDIMScheduler"), job("e", seed=5, negative_prompt="")]
    with ThreadPoolExecutor(8) as pool:
        blocker = occupy(client, pool)
        futures = [client.portal.start_task_soon(worker.generate, [j]) for j in jobs]
        wait_until(lambda: worker.queue_depth == len(jobs))
        blocker.result()
        sizes = [f.result()[0].batch_size for f in futures]
    # "a" and "c" share everything but prompt and seed; the others differ in steps, scheduler, or an
    # explicit negative prompt (SDXL treats "" differently from none).
    assert sizes == [2, 1, 2, 1, 1]


def test_a_failing_request_fails_alone_and_its_batch_mates_succeed(client):
    with ThreadPoolExecutor(8) as pool:
        blocker = occupy(client, pool)
        futures = queue_concurrently(client, pool, [
            {"prompt": "a cat", "seed": 1}, {"prompt": f"{FAULT}:fail", "seed": 2}, {"prompt": "a dog", "seed": 3},
        ], 3)
        blocker.result()
        ok1, failed, ok2 = (f.result() for f in futures)
    assert failed.status_code == 500
    assert "injected pipeline failure" in failed.json()["error"]
    assert ok1.status_code == ok2.status_code == 200
    assert_batch_equivalent(ok1.content, post(client, "a cat", seed=1).content)
    text = client.get("/metrics").text
    assert metric(text, "sdxl_errors_total", kind="pipeline") == 1


def test_a_nan_image_fails_its_request_and_never_reaches_the_client_as_black(client):
    with ThreadPoolExecutor(8) as pool:
        blocker = occupy(client, pool)
        futures = queue_concurrently(client, pool, [
            {"prompt": "a cat", "seed": 1}, {"prompt": f"{FAULT}:nan", "seed": 2},
        ], 2)
        blocker.result()
        ok, poisoned = (f.result() for f in futures)
    assert poisoned.status_code == 500
    assert "NaN" in poisoned.json()["error"]
    assert ok.status_code == 200  # same pipeline call, checked per image
    assert_batch_equivalent(ok.content, post(client, "a cat", seed=1).content)
    text = client.get("/metrics").text
    assert metric(text, "sdxl_errors_total", kind="nan") == 1
    # Blocker, the two together, the solo re-run: 4 images in 3 calls.
    assert (metric(text, "sdxl_batch_size_sum"), metric(text, "sdxl_batch_size_count")) == (4, 3)


def test_out_of_memory_is_a_503_and_the_server_keeps_serving(client):
    response = post(client, f"{FAULT}:oom")
    assert response.status_code == 503
    assert "memory" in response.json()["error"] and "Retry-After" in response.headers
    assert post(client, "a cat").status_code == 200
    assert metric(client.get("/metrics").text, "sdxl_errors_total", kind="oom") == 1


def test_full_queue_answers_429_with_retry_after(make_client):
    client = make_client(max_queue=1, max_batch=1)
    with ThreadPoolExecutor(4) as pool:
        blocker = occupy(client, pool, steps=3)
        [queued] = queue_concurrently(client, pool, [{"prompt": "queued"}], 1)
        refused = post(client, "one too many")
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "Queue is full" in refused.json()["error"]
        assert blocker.result().status_code == 200 and queued.result().status_code == 200
    assert client.app.state.worker.queue_depth == 0


def test_n_images_that_do_not_fit_the_queue_are_refused_whole(make_client):
    client = make_client(max_queue=2)
    response = client.post("/v1/images/generations", json={"prompt": "x", "n": 3, **FAST})
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_timeout_is_504_and_abandons_the_work(make_client):
    client = make_client(request_timeout=0.5)
    started = time.monotonic()
    response = post(client, STALL, num_inference_steps=20)  # ~4 s of work if it were not abandoned
    assert response.status_code == 504
    assert "did not finish" in response.json()["error"]
    # The pipeline call stops at its next step instead of running all 20.
    wait_until(lambda: client.app.state.worker.in_flight == 0, timeout=2)
    assert time.monotonic() - started < 2
    assert post(client, "after").status_code == 200


def test_draining_refuses_new_work_with_503(client):
    client.app.state.worker.begin_drain()
    response = post(client, "late")
    assert response.status_code == 503
    assert "shutting down" in response.json()["error"] and "Retry-After" in response.headers
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200


def test_request_whose_client_disconnected_is_dropped_before_it_runs(live_server):
    headers = auth()

    def metrics() -> str:
        return httpx.get(f"{live_server.url}/metrics", headers=headers).text

    def depth() -> float:
        return metric(metrics(), "sdxl_queue_depth")

    before = metrics()
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as http:
        with ThreadPoolExecutor(1) as pool:
            blocker = pool.submit(http.post, "/", json={"inputs": STALL, "parameters": {"num_inference_steps": 8}})
            wait_until(lambda: metric(metrics(), "sdxl_in_flight_images") == 1)
            body = b'{"inputs": "abandoned", "parameters": {"num_inference_steps": 2}}'
            request = (f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            with socket.create_connection(("127.0.0.1", live_server.port)) as raw:
                raw.sendall(request)
                wait_until(lambda: depth() == 1)
            assert blocker.result().status_code == 200
    wait_until(lambda: depth() == 0)
    after = metrics()
    assert metric(after, "sdxl_errors_total", kind="client_disconnected") == \
        metric(before, "sdxl_errors_total", kind="client_disconnected") + 1
    # Only the blocker's image was generated.
    assert metric(after, "sdxl_images_generated_total", kind="text2img") == \
        metric(before, "sdxl_images_generated_total", kind="text2img") + 1


def test_the_event_loop_stays_responsive_while_the_gpu_works(client):
    with ThreadPoolExecutor(2) as pool:
        blocker = occupy(client, pool, steps=5)
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        assert time.monotonic() - started < 0.5
        assert not blocker.done()
        assert blocker.result().status_code == 200


def test_faults_in_every_task_reach_clients_of_a_live_server_as_their_errors(live_server):
    """`python -m server --model tiny --fault-marker`: the synthetic pipelines inject, the server classifies."""
    image = base64.b64encode(png_bytes(sample_image())).decode()
    mask = base64.b64encode(png_bytes(Image.new("L", (256, 256), 255))).decode()
    edit = {"prompt": None, "strength": 1.0, "num_inference_steps": 2}
    cases = [
        ({"inputs": f"{FAULT}:fail", "parameters": FAST}, 500, "injected pipeline failure"),
        ({"inputs": image, "parameters": {**edit, "prompt": f"{FAULT}:oom"}}, 503, "Out of GPU memory"),
        ({"inputs": image, "parameters": {**edit, "prompt": f"{FAULT}:nan", "mask": mask}}, 500, "NaN"),
        ({"inputs": image, "parameters": {**edit, "prompt": f"{FAULT}:fail", "mask": mask}}, 500, "injected"),
    ]
    with httpx.Client(base_url=live_server.url, headers=auth(), timeout=30) as http:
        for body, status, needle in cases:
            response = http.post("/", json=body)
            assert response.status_code == status, (body["parameters"], response.text)
            assert needle in response.json()["error"]
        assert http.post("/", json={"inputs": image, "parameters": {**edit, "prompt": "fine"}}).status_code == 200


# --- wait budget --------------------------------------------------------------------------------------

def test_batch_waves_group_as_the_consumer_does():
    assert batch_waves([], 4) == 0
    assert batch_waves(["a"] * 9, 4) == 3
    assert batch_waves(["a", "b", "a", "b", "a"], 2) == 3  # a a | b b | a
    assert batch_waves(["solo1", "solo2", "a"], 8) == 3


def test_estimate_wait_counts_the_running_call_the_queue_and_its_own():
    assert estimate_wait(0, 1, 2.0, None) == 2.0  # idle: its own call
    assert estimate_wait(0, 1, 2.0, 0.5) == 3.5  # 1.5 s left of the running call
    assert estimate_wait(3, 2, 2.0, 5.0) == 10.0  # an overrunning call counts as ending now


def test_burst_over_the_wait_budget_is_refused_at_once_and_admitted_work_completes(make_client):
    budget = 3.0
    # Warm-up, as in production: one-off first-call costs stay out of the first measured call.
    client = make_client(max_wait_seconds=budget, max_batch=1, warmup=True)
    stall = {"inputs": f"{FAULT}:stall", "parameters": {"num_inference_steps": 4}}  # >= 0.8 s per call
    assert client.post("/", json=stall).status_code == 200  # measures the seconds per call
    assert metric(client.get("/metrics").text, "sdxl_estimated_wait_seconds") >= 0.8  # idle: its own call

    def send(index: int):
        started = time.monotonic()
        response = client.post("/", json=stall, headers={"Origin": "https://app.example"})
        return response, time.monotonic() - started

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(send, i) for i in range(10)]
        wait_until(lambda: client.app.state.worker.in_flight == 1)
        busy = metric(client.get("/metrics").text, "sdxl_estimated_wait_seconds")
        answers = [future.result() for future in futures]
    refused = [(r, t) for r, t in answers if r.status_code == 429]
    admitted = [(r, t) for r, t in answers if r.status_code != 429]
    assert busy > budget / 2, busy
    assert 1 <= len(admitted) <= 5 and len(refused) >= 5, [r.status_code for r, _ in answers]
    for response, seconds in refused:
        assert seconds < budget  # at once: before the budget (or a front's timeout) runs out
        assert response.headers["access-control-allow-origin"] == "*"
        assert 1 <= int(response.headers["retry-after"]) <= budget
        assert "wait budget" in response.json()["error"]
    for response, _ in admitted:
        assert response.status_code == 200  # admitted work is never dropped for the budget
    text = client.get("/metrics").text
    assert metric(text, "sdxl_errors_total", kind="wait_budget") == len(refused)
    assert metric(text, "sdxl_estimated_wait_seconds") < busy  # idle again: only its own call


def test_without_a_budget_the_same_burst_is_all_admitted(make_client):
    client = make_client(max_batch=1)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: post(client, f"{FAULT}:stall").status_code, range(4)))
    assert statuses == [200] * 4


def test_one_deadline_from_arrival_covers_model_wait_queue_and_generation(make_client, pipelines):
    """Waiting for the model (wait_for_model) and generating share one --request-timeout from arrival:
    the 504 comes at the timeout, not at the model wait plus another full timeout."""
    gate = threading.Event()
    client = make_client(loader=lambda: gate.wait(30) and pipelines, ready=False, request_timeout=2.0)
    threading.Timer(1.5, gate.set).start()
    started = time.monotonic()
    response = client.post("/", json={"inputs": STALL, "parameters": {"num_inference_steps": 25},  # ~5 s
                                      "options": {"wait_for_model": True}})
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert "of the request's arrival" in response.json()["error"]
    assert 1.9 < elapsed < 2.0 + 0.9, elapsed  # was 1.5 + 2.0 = 3.5 s
