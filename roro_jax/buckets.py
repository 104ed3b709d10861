"""Shape buckets: the few sizes a jitted program is compiled for. An input is padded up to its bucket, so a
new input compiles only when it lands in a bucket not seen before.

* :func:`bucket`: the smallest power of two that holds ``n`` (batch sizes, prompt and step lengths), or the
  smallest size of a fixed ladder (an engine's ``batch_buckets``).
* :func:`round_up`: ``n`` rounded up to a multiple (the rubric models' sequence lengths).
"""

from __future__ import annotations

from typing import Sequence


def bucket(n: int, minimum: int = 1, *, ladder: Sequence[int] | None = None) -> int:
    """The smallest power of two ``>= max(n, minimum, 1)``; with ``ladder`` (ascending sizes), the smallest
    of them ``>= max(n, minimum)`` (``ValueError`` if none is)."""
    n = max(int(n), minimum, 1)
    if ladder is not None:
        for size in ladder:
            if size >= n:
                return int(size)
        raise ValueError(f"no bucket of {list(ladder)} holds {n}")
    return 1 << (n - 1).bit_length()


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``, at least ``multiple``."""
    return max(multiple, -(-int(n) // multiple) * multiple)
