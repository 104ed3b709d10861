"""OpenAIServerEngine: request shape, parsing, finish reasons, retries/backoff, errors, load spreading.

A small HTTP server on 127.0.0.1 in the test process plays the server side with scripted answers
(well-formed vLLM-shaped completions, failures, stalls, malformed bodies), so what is tested here is the
engine's own request/parse/retry code. Real generation is tested against a real vLLM in
tests/integration/test_vllm_*.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from roro_jax.engines import ENGINES, SamplingParams, StepRequest, engine_class, make_engine
from roro_jax.engines.openai_server import (EndpointUnavailableError, EngineRequestError,
                                            MalformedResponseError, OpenAIServerEngine, map_finish_reason,
                                            topk_arrays)


def completion(token_ids, *, text=None, finish="stop", stop_reason="\n\n", k=3, as_ids=True, drop=()):
    """A vLLM-shaped /v1/completions body for generated ``token_ids`` (chosen logprob -0.1*(i+1))."""
    L = len(token_ids)
    key = (lambda t: f"token_id:{t}") if as_ids else (lambda t: chr(ord("a") + t % 26))
    tops = []
    for i, t in enumerate(token_ids):
        row = {key(t): -0.1 * (i + 1)}
        for j in range(k):  # k alternatives, worse than the chosen one, plus the chosen -> k+1 entries
            row[key(200 + j)] = -1.0 - j
        tops.append(row)
    choice = {"index": 0, "text": text if text is not None else "x" * L, "finish_reason": finish,
              "stop_reason": stop_reason, "token_ids": list(token_ids), "prompt_token_ids": None,
              "logprobs": {"tokens": [key(t) for t in token_ids],
                           "token_logprobs": [-0.1 * (i + 1) for i in range(L)],
                           "top_logprobs": tops, "text_offset": list(range(L))}}
    for field in drop:
        if field in choice:
            del choice[field]
        elif field in choice["logprobs"]:
            del choice["logprobs"][field]
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": L, "total_tokens": L + 1}}


class _Server(ThreadingHTTPServer):
    # the default backlog of 5 resets connections when a burst arrives on a loaded machine; behind the
    # fault proxy such a reset is a 502 (bad gateway) and costs a retry that no injected fault explains
    request_queue_size = 1024


class FakeServer:
    """Scripted OpenAI-compatible server: ``script(n, body) -> (status, json_or_bytes, delay_s)``."""

    def __init__(self, script):
        self.script = script
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = len(outer.bodies)
                    outer.bodies.append(body)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, payload, delay = outer.script(n, body)
                    if delay:
                        time.sleep(delay)
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

        self.httpd = _Server(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(tokens=(5, 6, 4, 4), **kw):
    return lambda n, body: (200, completion(tokens, **kw), 0)


def closed_port_url() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/v1"


def engine(urls, **kw):
    kw = {"max_retries": 2, "backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0, "seed": 0, **kw}
    return OpenAIServerEngine("m", urls, **kw)


def run(eng, reqs, params=SamplingParams(max_tokens=8, logprobs=3)):
    async def go():
        try:
            return await eng.generate(reqs, params)
        finally:
            await eng.aclose()

    return asyncio.run(go())


# ----------------------------------------------------------------------------- pure helpers
def test_map_finish_reason():
    assert map_finish_reason("stop", "\n\n") == "stop"
    assert map_finish_reason("stop", None) == "eos"
    assert map_finish_reason("stop", 2) == "eos"  # a stop token id
    assert map_finish_reason("length", None) == "length"
    with pytest.raises(ValueError, match="abort"):
        map_finish_reason("abort", None)


def test_topk_arrays_sorts_truncates_and_pads():
    lps, ids = topk_arrays([{7: -0.5, 3: -0.1, 9: -2.0}, {1: -0.3}], 2)
    np.testing.assert_array_equal(ids, [[3, 7], [1, -1]])
    np.testing.assert_allclose(lps, [[-0.1, -0.5], [-0.3, -np.inf]])
    assert lps.dtype == np.float32 and ids.dtype == np.int32


# ----------------------------------------------------------------------------- happy path
def test_request_fields_and_parsed_result():
    with FakeServer(ok((5, 6, 4, 4), text="ab\n\n")) as srv:
        eng = engine(srv.url)
        [r] = run(eng, [StepRequest([1, 2, 3], seed=7, request_id="q0")],
                  SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, top_k=5, logprobs=3))
    body = srv.bodies[0]
    assert body["prompt"] == [1, 2, 3] and body["seed"] == 7 and body["max_tokens"] == 8
    assert body["logprobs"] == 3 and body["stop"] == ["\n\n"] and body["top_k"] == 5
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["model"] == "m"
    assert body["include_stop_str_in_output"] is True and body["return_token_ids"] is True
    assert body["return_tokens_as_token_ids"] is True
    assert r.token_ids == [5, 6, 4, 4] and r.text == "ab\n\n" and r.finish_reason == "stop"
    assert r.logprobs.shape == (4,) and r.top_logprobs.shape == (4, 3)
    np.testing.assert_allclose(r.logprobs, [-0.1, -0.2, -0.3, -0.4], rtol=1e-6)
    # the chosen token (-0.1*(i+1)) ranks first, then the alternatives; the 4th entry is dropped
    np.testing.assert_allclose(r.top_logprobs[1], [-0.2, -1.0, -2.0], rtol=1e-6)
    np.testing.assert_array_equal(r.meta["top_ids"][1], [6, 200, 201])
    assert r.meta["endpoint"] == srv.url and r.meta["attempts"] == 1 and r.meta["request_id"] == "q0"


@pytest.mark.parametrize("finish,stop_reason,expected", [("stop", "\n\n", "stop"), ("stop", None, "eos"),
                                                          ("length", None, "length")])
def test_finish_reasons(finish, stop_reason, expected):
    with FakeServer(ok(finish=finish, stop_reason=stop_reason)) as srv:
        [r] = run(engine(srv.url), [StepRequest([1])])
    assert r.finish_reason == expected


def test_logprobs_zero_gives_chosen_only():
    with FakeServer(ok(k=0)) as srv:
        [r] = run(engine(srv.url), [StepRequest([1])], SamplingParams(max_tokens=8, logprobs=0))
    assert r.logprobs.shape == (4,) and r.top_logprobs.shape == (4, 0)


def test_results_keep_request_order():
    def script(n, body):
        p = body["prompt"][0]
        return 200, completion([p, p + 1]), 0.05 * (p % 3)  # answers come back out of order

    with FakeServer(script) as srv:
        rs = run(engine(srv.url), [StepRequest([i]) for i in range(9)])
    assert [r.token_ids[0] for r in rs] == list(range(9))


def test_token_strings_mapped_through_tokenizer(tmp_path):
    from roro_jax.tasks.toy import build_tokenizer, save_tokenizer

    save_tokenizer(tmp_path)
    tok = build_tokenizer()
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")

    def script(n, body):
        body = completion([a, b], k=0)
        ch = body["choices"][0]
        ch["logprobs"]["tokens"] = ["a", "b"]
        ch["logprobs"]["top_logprobs"] = [{"a": -0.1, "z": -2.0}, {"b": -0.2, "y": -3.0}]
        return 200, body, 0

    with FakeServer(script) as srv:
        eng = engine(srv.url, tokenizer_path=tmp_path)
        [r] = run(eng, [StepRequest([1])], SamplingParams(max_tokens=8, logprobs=2))
    np.testing.assert_array_equal(r.meta["top_ids"], [[a, tok.convert_tokens_to_ids("z")],
                                                      [b, tok.convert_tokens_to_ids("y")]])
    assert eng.decode(eng.encode("ab\n\n")) == "ab\n\n"
    assert eng.encode("ab") == [tok.bos_token_id, a, b] and eng.encode("ab", add_special_tokens=False) == [a, b]
    from roro_jax.engines.flax_engine import FlaxEngine  # same fingerprint recipe: prefix ids are shared

    assert eng.tokenizer_key == FlaxEngine.tokenizer_key.fget(type("E", (), {"tokenizer": tok,
                                                                              "_tokenizer_key": None})())


# ----------------------------------------------------------------------------- retries and errors
def test_retries_5xx_then_succeeds():
    def script(n, body):
        return (503, {"error": {"message": "overloaded"}}, 0) if n < 2 else (200, completion([5, 4, 4]), 0)

    with FakeServer(script) as srv:
        [r] = run(engine(srv.url, max_retries=2), [StepRequest([1])])
    assert len(srv.bodies) == 3 and r.meta["attempts"] == 3 and r.token_ids == [5, 4, 4]


def test_gives_up_after_retries_with_clear_error():
    with FakeServer(lambda n, b: (500, {"error": {"message": "boom"}}, 0)) as srv:
        eng = engine(srv.url, max_retries=2)
        with pytest.raises(EndpointUnavailableError, match=r"failed after 3 attempts on http://127\.0\.0\.1"):
            run(eng, [StepRequest([1], request_id="q7")])
    assert len(srv.bodies) == 3
    assert eng.stats()[srv.url]["failures"] == 3


def test_unreachable_endpoint_named():
    url = closed_port_url()
    eng = engine(url, max_retries=3, backoff=0.01, max_backoff=0.02)
    with pytest.raises(EndpointUnavailableError, match=url.replace(".", r"\.")) as ei:
        run(eng, [StepRequest([1], request_id="q1")])
    assert "q1" in str(ei.value) and "APIConnectionError" in str(ei.value)
    # 3 retries, each delay backoff * 2**attempt jittered into [0.5, 1], then capped at max_backoff
    d = list(eng.backoff_delays)
    assert len(d) == 3 and 0.005 <= d[0] <= 0.01 and all(0.01 <= x <= 0.02 for x in d[1:]), d


def _expected_delays(seed, backoff, max_backoff, n):
    """The engine's backoff schedule: min(max_backoff, backoff * 2**attempt) * U[0.5, 1] from Random(seed)."""
    import random

    rng = random.Random(seed)
    return [min(max_backoff, backoff * 2 ** a) * rng.uniform(0.5, 1.0) for a in range(n)]


def test_backoff_grows_exponentially():
    times = []

    def script(n, body):
        times.append(time.perf_counter())
        return 502, {"error": {"message": "bad gateway"}}, 0

    with FakeServer(script) as srv:
        eng = engine(srv.url, max_retries=3, backoff=0.2, max_backoff=0.5, seed=7)
        with pytest.raises(EndpointUnavailableError):
            run(eng, [StepRequest([1])])
    # the delays slept are the schedule: doubling, jittered, capped (0.2*4 = 0.8 -> at most 0.5)
    d = list(eng.backoff_delays)
    np.testing.assert_allclose(d, _expected_delays(7, 0.2, 0.5, 3), rtol=1e-12)
    assert d[2] <= 0.5
    # and the server saw the retries no sooner than that (a sleep never ends early)
    assert len(times) == 4 and all(g >= x for g, x in zip(np.diff(times), d)), (np.diff(times), d)


def test_dead_endpoint_is_routed_around():
    with FakeServer(ok()) as srv:
        dead = closed_port_url()
        eng = engine([dead, srv.url], max_retries=2)
        rs = run(eng, [StepRequest([i]) for i in range(6)])
    assert all(r.meta["endpoint"] == srv.url for r in rs)
    assert len(srv.bodies) == 6 and eng.stats()[dead]["failures"] >= 1


def test_stall_times_out_and_retries():
    def script(n, body):
        return 200, completion([5, 4, 4]), (3.0 if n == 0 else 0)  # the first answer stalls

    with FakeServer(script) as srv:
        eng = engine(srv.url, timeout=0.5, max_retries=1)
        [r] = run(eng, [StepRequest([1])])
    # the first attempt timed out (it did not wait the stall out) and the retry answered
    assert r.meta["attempts"] == 2 and eng.stats()[srv.url]["errors"] == {"APITimeoutError": 1}


def test_aborted_generation_is_retried():
    def script(n, body):
        return 200, completion([5, 4], finish="abort" if n == 0 else "stop"), 0

    with FakeServer(script) as srv:
        [r] = run(engine(srv.url), [StepRequest([1])])
    assert r.meta["attempts"] == 2


def test_garbled_body_is_retried_then_named():
    good = completion([5, 6])

    def script(n, body):  # the first answer is cut off mid-JSON (a torn transfer)
        return 200, (json.dumps(good).encode()[:40] if n == 0 else good), 0

    with FakeServer(script) as srv:
        [r] = run(engine(srv.url), [StepRequest([1])])
    assert r.meta["attempts"] == 2 and r.token_ids == [5, 6]
    with FakeServer(lambda n, b: (200, b"{not json", 0)) as srv:
        with pytest.raises(EndpointUnavailableError, match="undecodable response body"):
            run(engine(srv.url, max_retries=1), [StepRequest([1])])


def test_retry_budget_bounds_retries_over_all_requests():
    with FakeServer(lambda n, b: (500, {"error": {"message": "down"}}, 0)) as srv:
        eng = engine(srv.url, max_retries=5, retry_budget=4, concurrency=1)
        with pytest.raises(EndpointUnavailableError, match="retry budget of 4 retries is spent"):
            run(eng, [StepRequest([i], request_id=f"q{i}") for i in range(3)])
    # one request at a time: the first spends the whole budget (5 attempts), the batch then fails
    assert eng.retries == 4 and len(srv.bodies) == 5


def test_latency_stats_count_every_finished_request():
    def script(n, body):
        return 200, completion([5, 4]), 0.05

    with FakeServer(script) as srv:
        eng = engine(srv.url)
        assert eng.latency_stats() == {"count": 0}
        run(eng, [StepRequest([i]) for i in range(5)])
    st = eng.latency_stats()
    assert st["count"] == 5 and 0.05 <= st["p50"] <= st["p90"] <= st["p99"] <= st["max"]  # each answer took 0.05 s
    assert st["max"] == max(eng.latencies)


def test_bad_request_not_retried():
    with FakeServer(lambda n, b: (400, {"error": {"message": "prompt too long: 5000 > 4096"}}, 0)) as srv:
        with pytest.raises(EngineRequestError, match=r"HTTP 400.*prompt too long"):
            run(engine(srv.url, max_retries=3), [StepRequest([1])])
    assert len(srv.bodies) == 1


@pytest.mark.parametrize("drop,match", [
    (("token_ids",), "no token_ids"),  # and tokens are plain strings below -> cannot recover
    (("logprobs",), "no logprobs"),
    (("token_logprobs",), "no logprobs"),
    (("top_logprobs",), "top_logprobs has None rows"),
])
def test_malformed_responses(drop, match):
    with FakeServer(ok(drop=drop, as_ids="token_ids" not in drop)) as srv:
        with pytest.raises(MalformedResponseError, match=match) as ei:
            run(engine(srv.url), [StepRequest([1])])
    assert srv.url in str(ei.value) and len(srv.bodies) == 1


def test_token_ids_recovered_from_token_id_keys():
    with FakeServer(ok((7, 8), drop=("token_ids",))) as srv:
        [r] = run(engine(srv.url), [StepRequest([1])])
    assert r.token_ids == [7, 8]


def test_mismatched_lengths_and_non_json():
    def short(n, body):
        b = completion([5, 6, 4])
        b["choices"][0]["logprobs"]["token_logprobs"].pop()
        return 200, b, 0

    with FakeServer(short) as srv:
        with pytest.raises(MalformedResponseError, match="3 token_ids but 2 token_logprobs"):
            run(engine(srv.url), [StepRequest([1])])
    with FakeServer(lambda n, b: (200, {"choices": []}, 0)) as srv:
        with pytest.raises(MalformedResponseError, match="no choices"):
            run(engine(srv.url), [StepRequest([1])])


def test_one_failure_cancels_the_batch_and_raises_it():
    def script(n, body):
        if body["prompt"] == [3]:
            return 400, {"error": {"message": "nope"}}, 0
        return 200, completion([5, 4]), 0.3

    with FakeServer(script) as srv:
        with pytest.raises(EngineRequestError, match="nope"):
            run(engine(srv.url), [StepRequest([i]) for i in range(6)])


def test_invalid_params():
    with pytest.raises(ValueError, match="logprobs"):
        run(engine("http://127.0.0.1:9/v1"), [StepRequest([1])], SamplingParams(logprobs=21))
    with pytest.raises(ValueError, match="endpoint"):
        OpenAIServerEngine("m", [])


# ----------------------------------------------------------------------------- load and concurrency
def test_load_spread_and_concurrency_bound():
    def slow(n, body):
        return 200, completion([5, 4]), 0.05

    with FakeServer(slow) as a, FakeServer(slow) as b:
        eng = engine([a.url, b.url], concurrency=4)
        rs = run(eng, [StepRequest([i]) for i in range(40)])
    assert len(rs) == 40
    assert abs(len(a.bodies) - len(b.bodies)) <= 4, (len(a.bodies), len(b.bodies))
    assert a.max_in_flight + b.max_in_flight <= 4 + 1
    assert max(a.max_in_flight, b.max_in_flight) >= 2  # requests do overlap


def test_least_in_flight_sends_work_to_the_free_server():
    """A slow and a fast server: each request goes to the endpoint with the fewest requests in flight. The
    slow server holds its first two requests until the fast one has answered all the others, so with
    least-in-flight choice the split is exactly 2 / 38 (round robin would send the slow one every other
    request and block)."""
    release = threading.Event()

    def slow(n, body):
        release.wait(timeout=20)  # the fallback only matters when the choice is wrong
        return 200, completion([body["prompt"][0], 4]), 0

    def fast(n, body):
        if n == 37:
            release.set()
        return 200, completion([body["prompt"][0], 4]), 0

    with FakeServer(slow) as a, FakeServer(fast) as b:
        eng = engine([a.url, b.url], concurrency=4, timeout=60.0)
        rs = run(eng, [StepRequest([i]) for i in range(40)])
    assert [r.token_ids[0] for r in rs] == list(range(40))
    # the first four requests go a, b, a, b (ties by round robin); from then on b is always the least busy
    assert (len(a.bodies), len(b.bodies)) == (2, 38)
    assert sorted(body["prompt"][0] for body in a.bodies) == [0, 2]
    assert a.max_in_flight == 2 and all(r.meta["attempts"] == 1 for r in rs)


def test_server_failing_mid_run_loses_no_request():
    """One of two servers starts answering 503 after its fifth answer: every request still gets its own
    answer, the failed attempts are retried on the healthy server, and none is lost or duplicated."""
    def healthy(n, body):
        return 200, completion([body["prompt"][0], 4]), 0.005

    def breaks(n, body):
        if n < 5:
            return 200, completion([body["prompt"][0], 4]), 0.005
        return 503, {"error": {"message": "overloaded"}}, 0

    with FakeServer(healthy) as a, FakeServer(breaks) as b:
        eng = engine([a.url, b.url], concurrency=4, max_retries=2)
        rs = run(eng, [StepRequest([i], request_id=f"q{i}") for i in range(40)])
    assert [r.token_ids[0] for r in rs] == list(range(40)) and [r.meta["request_id"] for r in rs] == \
        [f"q{i}" for i in range(40)]
    on_b = [r for r in rs if r.meta["endpoint"] == b.url]
    assert len(on_b) == 5 and len(b.bodies) > 5  # b answered five, then failed the rest it was sent
    st = eng.stats()
    assert st[b.url]["failures"] == len(b.bodies) - 5 and st[b.url]["errors"] == {"InternalServerError": len(b.bodies) - 5}
    assert st[a.url]["failures"] == 0 and len(a.bodies) == 35  # every request b failed was answered by a once
    assert all(r.meta["attempts"] <= 2 for r in rs)  # a retry goes to the other endpoint


def test_engine_reused_across_event_loops():
    with FakeServer(ok()) as srv:
        eng = engine(srv.url)
        for _ in range(2):  # each asyncio.run is a new loop: clients are rebuilt for it
            assert len(run(eng, [StepRequest([1])])) == 1


# ----------------------------------------------------------------------------- registry
def test_registry_is_lazy():
    assert set(ENGINES) >= {"flax", "openai_server", "vllm_offline"}
    assert engine_class("openai_server") is OpenAIServerEngine
    eng = make_engine("openai_server", model="m", endpoints="http://127.0.0.1:9/v1", n_params=1e6)
    assert eng.n_params == 1e6 and eng.name == "openai_server"
    assert "vllm" not in sys.modules  # importing the engines package or this engine never imports vllm
    with pytest.raises(ValueError, match="unknown engine 'nope'"):
        make_engine("nope")
