"""The fault-injecting proxy (scripts/fault_proxy.py) in front of a scripted server, with the engine's
retries riding through every fault kind. The same proxy runs in front of the real vLLM server in
tests/integration/test_vllm_faults.py."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from roro_jax.engines import StepRequest
from roro_jax.engines.openai_server import EndpointUnavailableError

sys.path.insert(0, str(Path(__file__).parent))
from test_openai_server import FakeServer, engine, ok, run  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "roro_fault_proxy", Path(__file__).resolve().parents[2] / "scripts" / "fault_proxy.py")
fault_proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fault_proxy)


def test_each_fault_costs_exactly_one_retry():
    rates = {"http500": 0.15, "malformed": 0.15, "drop": 0.15}
    with FakeServer(ok()) as srv, fault_proxy.FaultProxy(srv.url, rates=rates, seed=1) as proxy:
        eng = engine(proxy.url + "/v1", max_retries=10, timeout=10.0, backoff=0.01, max_backoff=0.02)
        rs = run(eng, [StepRequest([i], request_id=f"q{i}") for i in range(40)])
    assert [r.token_ids for r in rs] == [[5, 6, 4, 4]] * 40
    c = proxy.counts
    injected = c["http500"] + c["malformed"] + c["drop"]
    assert min(c["http500"], c["malformed"], c["drop"]) > 0 and c["forwarded"] == 40, c
    assert c["bad_gateway"] == 0, c  # the upstream took every connection
    assert eng.retries == injected, (c, eng.stats())  # every fault cost one retry, nothing else did
    assert sum(r.meta["attempts"] for r in rs) == 40 + injected


def test_every_fault_kind_ridden_through_with_timeouts():
    rates = {"http500": 0.15, "malformed": 0.15, "slow": 0.1, "drop": 0.15}
    with FakeServer(ok()) as srv, fault_proxy.FaultProxy(srv.url, rates=rates, seed=1, slow_s=1.5) as proxy:
        eng = engine(proxy.url + "/v1", max_retries=10, timeout=0.5, backoff=0.01, max_backoff=0.02)
        rs = run(eng, [StepRequest([i], request_id=f"q{i}") for i in range(40)])
    assert [r.token_ids for r in rs] == [[5, 6, 4, 4]] * 40
    c = proxy.counts
    assert all(c[k] > 0 for k in fault_proxy.FAULTS), c
    # a slow answer times out on the client; a loaded machine may time out a clean one too
    assert eng.retries >= sum(c[k] for k in fault_proxy.FAULTS)


def test_refused_window_then_recovery():
    with FakeServer(ok()) as srv, fault_proxy.FaultProxy(srv.url) as proxy:
        proxy.refuse(0.6)
        t0 = time.time()
        eng = engine(proxy.url + "/v1", max_retries=8, backoff=0.1, max_backoff=0.3)
        [r] = run(eng, [StepRequest([1])])
        assert r.meta["attempts"] > 1 and time.time() - t0 >= 0.5
        assert proxy.counts["refused_windows"] == 1 and proxy.counts["forwarded"] == 1


def test_dead_upstream_is_a_bad_gateway_and_a_clear_final_error():
    from test_openai_server import closed_port_url

    with fault_proxy.FaultProxy(closed_port_url().removesuffix("/v1")) as proxy:
        eng = engine(proxy.url + "/v1", max_retries=2)
        with pytest.raises(EndpointUnavailableError, match=r"failed after 3 attempts.*upstream unreachable"):
            run(eng, [StepRequest([1], request_id="q1")])
    assert proxy.counts["bad_gateway"] == 3


def test_bad_rates_rejected():
    with pytest.raises(ValueError, match="unknown fault kinds"):
        fault_proxy.FaultProxy("http://127.0.0.1:1", rates={"explode": 0.1})
    with pytest.raises(ValueError, match="sum to at most 1"):
        fault_proxy.FaultProxy("http://127.0.0.1:1", rates={"http500": 0.7, "drop": 0.6})
