"""Stop-string automaton vs a brute-force search over the concatenated text."""

from __future__ import annotations

import numpy as np
import pytest

from roro_jax.models.stopping import build_stop_tables

TEXTS = ("", "a", "b", "\n", "\n\n", "x\n", "\nb", "ab\n\n\nc", "aab", "ba", "\n\nx", "abab")


def first_stop(tokens: list[int], stop: str) -> int | None:
    """Index of the token during which ``stop`` first appears in the generated text (brute force)."""
    text = ""
    for i, tok in enumerate(tokens):
        text += TEXTS[tok]
        if stop in text:
            return i
    return None


def run_tables(tables, which: int, tokens: list[int]) -> int | None:
    state = 0
    for i, tok in enumerate(tokens):
        if tables.hit[which, state, tok]:
            return i
        state = tables.next_state[which, state, tok]
    return None


@pytest.mark.parametrize("stops", [("\n\n",), ("abab", "\n\n"), ("aab",), ("b\nb",)])
def test_automaton_matches_brute_force(stops):
    tables = build_stop_tables(TEXTS, stops, n_state=4)
    assert tables.next_state.shape == (len(stops), 4, len(TEXTS))
    rng = np.random.RandomState(0)
    hits = 0
    for _ in range(400):
        tokens = rng.randint(0, len(TEXTS), rng.randint(1, 12)).tolist()
        for which, stop in enumerate(stops):
            want = first_stop(tokens, stop)
            assert run_tables(tables, which, tokens) == want, (tokens, stop)
            hits += want is not None
    assert hits > 50  # the random sequences really exercise matches


def test_single_token_and_boundary_cases():
    t = build_stop_tables(TEXTS, ("\n\n",))
    nl, nlnl, xnl, nlb = TEXTS.index("\n"), TEXTS.index("\n\n"), TEXTS.index("x\n"), TEXTS.index("\nb")
    assert t.hit[0, 0, nlnl]                     # one token holds the whole delimiter
    assert not t.hit[0, 0, nl] and t.next_state[0, 0, nl] == 1
    assert t.hit[0, 1, nl] and t.hit[0, 1, nlb]  # "\n" + "\n..." spans two tokens
    assert t.next_state[0, 0, xnl] == 1
    assert t.next_state[0, 1, TEXTS.index("")] == 1  # empty tokens keep the state


def test_bad_stop_strings():
    with pytest.raises(ValueError, match="empty stop string"):
        build_stop_tables(TEXTS, ("",))
    with pytest.raises(ValueError, match="n_state"):
        build_stop_tables(TEXTS, ("abcdef",), n_state=2)
