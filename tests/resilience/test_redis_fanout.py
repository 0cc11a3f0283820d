"""resilience/redis_fanout.py against the real cache and state Redis: results in order, one server's
failure confined to its own calls, connections left in step, scripts reloaded after a flush."""

import time

import pytest
from django_redis import get_redis_connection
from redis.exceptions import RedisError, ResponseError

from resilience.redis_fanout import command, run_all, script_call
from tests.stack import stack

pytestmark = pytest.mark.usefixtures("real_db")


@pytest.fixture
def servers():
    state, cache = get_redis_connection("state"), get_redis_connection("default")
    echo = "return {KEYS[1], ARGV[1]}"
    return state, cache, state.register_script(echo), cache.register_script(echo)


def calls(servers, tag):
    state, cache, on_state, on_cache = servers
    return [
        script_call(state, on_state, ["s1"], [tag]),
        script_call(cache, on_cache, ["c1"], [tag]),
        script_call(state, on_state, ["s2"], [tag]),
    ]


def test_results_come_back_in_call_order_across_servers(servers):
    assert run_all(calls(servers, "a")) == [[b"s1", b"a"], [b"c1", b"a"], [b"s2", b"a"]]
    assert run_all([]) == []


def test_plain_commands_and_scripts_mix_on_one_connection(servers):
    state, cache, on_state, _on_cache = servers
    cache.set("fanout:plain", b"v")
    results = run_all(
        [
            command(cache, "GET", "fanout:plain"),
            script_call(state, on_state, ["s"], ["x"]),
            command(cache, "GET", "fanout:absent"),
            command(state, "NOSUCHCOMMAND"),
        ]
    )
    assert results[:3] == [b"v", [b"s", b"x"], None]
    assert isinstance(results[3], ResponseError)
    assert run_all([command(state, "PING")]) == [b"PONG"]


def test_a_script_error_is_that_calls_result_and_the_connection_stays_in_step(servers):
    state, _cache, on_state, _on_cache = servers
    broken = state.register_script("return redis.call('NOSUCHCOMMAND')")
    results = run_all([script_call(state, broken, [], []), script_call(state, on_state, ["s"], ["ok"])])
    assert isinstance(results[0], ResponseError)
    assert results[1] == [b"s", b"ok"]
    assert run_all(calls(servers, "b"))[0] == [b"s1", b"b"]


def test_scripts_are_loaded_again_after_the_server_forgot_them(servers):
    state, cache = servers[0], servers[1]
    run_all(calls(servers, "c"))
    state.script_flush()
    cache.script_flush()
    assert run_all(calls(servers, "d")) == [[b"s1", b"d"], [b"c1", b"d"], [b"s2", b"d"]]


@pytest.mark.usefixtures("restore_stack")
@pytest.mark.parametrize("fault", ["stop", "pause"])
def test_a_down_or_hung_server_fails_only_its_own_calls(servers, fault):
    run_all(calls(servers, "warm"))  # pooled connections exist, as in a serving process
    stack(fault, "cache")
    try:
        started = time.monotonic()
        results = run_all(calls(servers, "e"))
        elapsed = time.monotonic() - started
    finally:
        stack("resume" if fault == "pause" else "start", "cache")
    assert results[0] == [b"s1", b"e"] and results[2] == [b"s2", b"e"]
    assert isinstance(results[1], RedisError | OSError)
    assert elapsed < 2.0  # bounded by the socket timeout, not by the hang
    # The pool was not left with a half-read reply: the next calls see their own answers.
    assert run_all(calls(servers, "f")) == [[b"s1", b"f"], [b"c1", b"f"], [b"s2", b"f"]]
