"""Stop-string matching on token ids, precomputed so that it runs inside a jitted sampling loop.

A stop string can end inside a token or span several tokens (``"\\n\\n"`` may be one token ``"\\n\\n"``,
``".\\n\\n"``, or two ``"\\n"`` tokens). For each stop string ``s`` we build a Knuth–Morris–Pratt automaton over
characters whose state is the length of the longest prefix of ``s`` that ends the text generated so far,
and lift it to whole tokens: ``next_state[q, tok]`` and ``hit[q, tok]`` (the string completes somewhere
inside ``tok`` when entered in state ``q``). Inside the loop one gather per stop string per step decides.

Each token's text is its individual decoding (``tokenizer.decode([id])``), special tokens included: the
match is on the raw generated text, so ``"\\n<|im_end|>\\n"`` does not read as ``"\\n\\n"``. This is exact
for byte-level BPE vocabularies as long as the stop string is ASCII (true for the step delimiter
``"\\n\\n"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class StopTables:
    """``next_state``/``hit`` [n_stop, n_state, vocab] (int32/bool), per-string lengths [n_stop]."""

    next_state: np.ndarray
    hit: np.ndarray
    lengths: np.ndarray


def _prefix_function(s: str) -> list[int]:
    fail = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


def _advance(s: str, fail: list[int], q: int, text: str) -> tuple[int, bool]:
    """Run the automaton of ``s`` from state ``q`` over ``text``: (final state, whether ``s`` completed)."""
    for c in text:
        while q and s[q] != c:
            q = fail[q - 1]
        if s[q] == c:
            q += 1
        if q == len(s):
            return 0, True
    return q, False


def build_stop_tables(token_texts: tuple[str, ...], stops: tuple[str, ...], n_state: int | None = None
                      ) -> StopTables:
    """Tables for ``stops`` over a vocabulary whose i-th token decodes to ``token_texts[i]``.

    ``n_state`` pads the state axis (for static shapes); it must be at least the longest stop string.
    """
    if any(not s for s in stops):
        raise ValueError("empty stop string")
    longest = max((len(s) for s in stops), default=1)
    n_state = longest if n_state is None else n_state
    if n_state < longest:
        raise ValueError(f"n_state={n_state} < longest stop string ({longest})")
    vocab = len(token_texts)
    nxt = np.zeros((max(len(stops), 1), n_state, vocab), np.int32)
    hit = np.zeros((max(len(stops), 1), n_state, vocab), bool)
    for i, s in enumerate(stops):
        fail = _prefix_function(s)
        chars = set(s)
        for tok, text in enumerate(token_texts):
            if not text:
                nxt[i, :, tok] = np.arange(n_state)  # an empty token leaves the state unchanged
                continue
            if chars.isdisjoint(text):
                continue  # state resets to 0, no hit
            for q in range(len(s)):
                nxt[i, q, tok], hit[i, q, tok] = _advance(s, fail, q, text)
    return StopTables(nxt, hit, np.array([len(s) for s in stops] or [0], np.int32))


@lru_cache(maxsize=8)
def _cached_tables(token_texts: tuple[str, ...], stops: tuple[str, ...], n_state: int) -> StopTables:
    return build_stop_tables(token_texts, stops, n_state)


def stop_tables_for(token_texts: tuple[str, ...], stops: tuple[str, ...], n_state: int) -> StopTables:
    """:func:`build_stop_tables`, memoised per (vocabulary, stop strings, padding)."""
    return _cached_tables(token_texts, tuple(stops), n_state)


def token_texts(tokenizer, vocab_size: int) -> tuple[str, ...]:
    """Each id's individual decoding (ids the tokenizer does not know decode to "")."""
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    return tuple(texts) + ("",) * (vocab_size - n)
