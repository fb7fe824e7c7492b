"""The sequential verdict (`eval.sequential=true`): read the paired test differences in blocks, in
an order fixed by the seed before any is looked at, and stop as soon as the comparison is decided.

A fixed-size interval looked at after every block is wrong more often than its level says (the
more looks, the more often; tests/test_sequential.py shows it). A *confidence sequence* is an
interval that holds at every block at once: P(the true difference ever leaves it) <= alpha, so the
comparison may stop at the first block where it decides, with its error held under that optional
stopping. The one used is the betting confidence sequence of Waudby-Smith & Ramdas (2023,
"Estimating means of bounded random variables by betting", JRSS-B: the hedged capital process with
the predictable plug-in bets, their Theorem 3): for each candidate mean m, a gambler bets on the
next example being above or below m; m leaves the sequence once her capital reaches 1/alpha (Ville's
inequality). It is among the tightest known for bounded scores, and needs no variance assumption.

Why our own: the reference implementation (`confseq`) ships as source only, a C++ build; the
procedure is a few array operations over a grid of candidate means.

The decision reads the sequence as the fixed-size verdict reads its interval (analysis/verdict.py):
"better" once it lies above 0, "worse" once below, "equivalent" once inside (-margin, +margin); at
the last block, whatever the sequence then says ("inconclusive" when none).

Where the test pass was deferred (the jobs scored development examples only), `read_until_decided`
scores the test examples block by block as it reads them (settle.py), so the examples after the
stop are never scored; `sequential` reads differences already scored, in the same order, and stops
at the same block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

GRID = 1001     # candidate means of (difference + 1) / 2 on [0, 1]: the bounds' resolution is 0.002
MAX_BET = 0.5   # the largest fraction of capital bet (c in the paper): keeps every factor above 1 - c
DEFAULT_BLOCK = 50  # eval.sequential_block's default, for a recorded run whose value cannot be read


@dataclass(frozen=True)
class Sequential:
    """Where the sequential comparison stopped."""
    verdict: str        # better | worse | equivalent | inconclusive
    used: int           # test examples read when it stopped
    available: int      # test examples it could have read
    low: float          # the confidence sequence at the stop, on the difference's scale
    high: float
    level: float
    block: int

    def sentence(self) -> str:
        """e.g. 'sequential: better after 150 of 400 test examples (blocks of 50; 95% betting confidence
        sequence [+0.021, +0.214], valid at every block)'."""
        return (f"sequential: {self.verdict} after {self.used} of {self.available} test examples (blocks of "
                f"{self.block}; {self.level:.1%} betting confidence sequence [{self.low:+.3f}, {self.high:+.3f}], "
                "valid at every block)").replace(".0%", "%")


def bounds(diffs: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The confidence sequence for the mean of `diffs` (each in [-1, 1]) after every example:
    (lower, upper) arrays of len(diffs), each the running intersection (narrower, still valid)."""
    x = (np.clip(np.asarray(diffs, dtype=float), -1, 1) + 1) / 2  # onto [0, 1]
    n = len(x)
    t = np.arange(1, n + 1)
    mean = (0.5 + np.cumsum(x)) / (t + 1)
    variance = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    before = np.concatenate([[0.25], variance[:-1]])  # predictable: the bet on example t sees t - 1
    bet = np.sqrt(2 * np.log(2 / alpha) / (before * t * np.log(t + 1)))
    m = np.linspace(0, 1, GRID)[None, :]
    with np.errstate(divide="ignore"):
        up = np.minimum(bet[:, None], MAX_BET / m)          # betting that the mean is above m
        down = np.minimum(bet[:, None], MAX_BET / (1 - m))  # ... below m
        log_up = np.cumsum(np.log1p(up * (x[:, None] - m)), axis=0)
        log_down = np.cumsum(np.log1p(-down * (x[:, None] - m)), axis=0)
    capital = np.logaddexp(log_up, log_down) - np.log(2)  # the hedge: half on each side
    inside = capital < np.log(1 / alpha)
    grid = m[0]
    low = np.where(inside.any(axis=1), grid[np.argmax(inside, axis=1)], np.nan)
    high = np.where(inside.any(axis=1), grid[GRID - 1 - np.argmax(inside[:, ::-1], axis=1)], np.nan)
    low, high = np.fmax.accumulate(np.nan_to_num(low, nan=0.0)), np.fmin.accumulate(np.nan_to_num(high, nan=1.0))
    return 2 * low - 1, 2 * high - 1


def decided(low: float, high: float, margin: float) -> str | None:
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if -margin < low and high < margin:
        return "equivalent"
    return None


def order(n: int, seed: int) -> np.ndarray:
    """The order the `n` test examples (ids 0 .. n-1) are read in: fixed by the seed alone, before any
    score is seen."""
    return np.random.default_rng(seed).permutation(n)


def in_reading_order(ids, values, n: int, seed: int) -> np.ndarray:
    """`values` (one per example id of `ids`, each in 0 .. n-1) in the order `order(n, seed)` reads them."""
    rank = np.argsort(order(n, seed))  # (rank[id]: its place in the reading)
    return np.asarray(values, dtype=float)[np.argsort(rank[np.asarray(ids, dtype=int)], kind="stable")]


def sequential(diffs: np.ndarray, alpha: float, margin: float, block: int, available: int | None = None
               ) -> Sequential:
    """Read `diffs` (adapter - baseline per test example, already in reading order) in blocks of
    `block`; stop at the first block where the confidence sequence at 1 - alpha decides.
    `available`: the test examples there are (default: len(diffs); more when a deferred pass stopped)."""
    diffs = np.asarray(diffs, dtype=float)
    low, high = bounds(diffs, alpha)
    ends = [*range(block, len(diffs), block), len(diffs)]
    end = next((e for e in ends if decided(low[e - 1], high[e - 1], margin)), len(diffs))  # (else: every example)
    verdict = decided(low[end - 1], high[end - 1], margin) or "inconclusive"
    return Sequential(verdict, end, available or len(diffs), float(low[end - 1]), float(high[end - 1]), 1 - alpha,
                      block)


def read_until_decided(score_block: Callable[[list[int]], np.ndarray], n: int, seed: int, alpha: float,
                       margin: float, block: int) -> Sequential:
    """Score the `n` test examples block by block, in the order `seed` fixes (`score_block(ids)`:
    adapter - baseline for each of those examples), until the confidence sequence decides: the
    examples after that block are never scored."""
    reading, diffs = order(n, seed), np.empty(0)
    for start in range(0, n, block):
        diffs = np.concatenate([diffs, np.asarray(score_block([int(i) for i in reading[start:start + block]]),
                                                  dtype=float)])
        low, high = bounds(diffs, alpha)
        if decided(low[-1], high[-1], margin):
            break
    return sequential(diffs, alpha, margin, block, n)
