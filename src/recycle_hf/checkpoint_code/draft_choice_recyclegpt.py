# Copyright 2026 The recycle-hf team. Licensed under the Apache License, Version 2.0.
"""How `num_draft_tokens="auto"` decides, from timings it is given: the rule, kept apart from the timing itself so
that tests can feed it noisy, drifting and contended sequences.

What enters:
- each candidate shape's expected tokens per step, E, from counted acceptance (it does not depend on load);
- rounds of timings, each round one plain token (`generate`'s own time between tokens) and one step of every
  candidate, taken close together.
Step costs enter only as ratios to plain decoding within a round (paired): a machine that slows down or speeds up
between rounds, or another process that takes a core for a while, moves both sides of a round alike.

The statistic is the paired median, with a notch interval as its noise: median +- 1.82 IQR / sqrt(n), the normal
approximation of a 95% interval for one median (1.96 x 1.2533 sigma / sqrt(n), with sigma = IQR / 1.349; McGill,
Tukey and Larsen's 1.58 is for comparing two medians). Medians ignore the minority of rounds that other work hit;
minima would too, but a minimum of a ratio rewards a lucky plain sample as much as a lucky step.

The decision:
1. Candidates are ordered simplest first (chains by k, then trees by node count). The simplest is the current
   choice; a later one replaces it only when its cost per token is lower beyond the noise (the paired ratio's
   interval lies below 1, by at least `MIN_ADVANTAGE`).
2. Against plain decoding: the current choice is taken when its cost per token is below plain's beyond the noise,
   plain decoding when it is above beyond the noise.
3. Otherwise nothing can be decided: the fallback is plain decoding (its tokens are exactly plain decoding's, and it
   is never slower than it), marked provisional, so that it is not kept as final and a later call measures again.

This file is remote code: a checkpoint folder carries it, so it imports only the standard library.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


# The notch factor: median +- NOTCH * IQR / sqrt(n).
NOTCH = 1.82
# A more complex shape must also be this much cheaper per token: nine rounds can understate the noise.
MIN_ADVANTAGE = 0.02


@dataclass(frozen=True)
class PairedRatio:
    """The median of numerator / denominator over paired rounds, with its noise interval [low, high]."""

    median: float
    low: float
    high: float
    rounds: int

    def inverted(self) -> PairedRatio:
        """The ratio the other way round (denominator / numerator)."""
        return PairedRatio(1 / self.median, 1 / self.high, 1 / self.low if self.low > 0 else math.inf, self.rounds)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> PairedRatio:
    """The paired median of numerators[i] / denominators[i] and its notch interval."""
    ratios = sorted(n / d for n, d in zip(numerators, denominators, strict=True))
    median = statistics.median(ratios)
    if len(ratios) < 2:
        return PairedRatio(median, 0.0, math.inf, len(ratios))
    first, _, third = statistics.quantiles(ratios, n=4, method="inclusive")
    half_width = NOTCH * (third - first) / math.sqrt(len(ratios))
    return PairedRatio(median, median - half_width, median + half_width, len(ratios))


@dataclass(frozen=True)
class DraftShapeDecision:
    """What auto decided: `shape` (a candidate's key, or 0 for plain decoding), whether the timings decided it
    (`decided`; else it is the provisional fallback), and the chosen shape's speed over plain decoding per token
    (`speedup`, paired, with its interval; the current best candidate's when plain decoding was chosen)."""

    shape: Hashable
    decided: bool
    speedup: PairedRatio
    reason: str


def decide_draft_shape(
    expected_tokens: dict[Hashable, float],
    step_seconds: dict[Hashable, Sequence[float]],
    plain_seconds: Sequence[float],
) -> DraftShapeDecision:
    """Decide among the candidates of `expected_tokens` (in that order, simplest first) and plain decoding (0), from
    paired rounds: `step_seconds[shape][i]` and `plain_seconds[i]` were timed in round i."""
    per_token = {shape: [seconds / expected_tokens[shape] for seconds in step_seconds[shape]]
                 for shape in expected_tokens}
    shapes = list(expected_tokens)
    current = shapes[0]
    for shape in shapes[1:]:
        if paired_ratio(per_token[shape], per_token[current]).high < 1 - MIN_ADVANTAGE:
            current = shape
    against_plain = paired_ratio(per_token[current], plain_seconds)
    speedup = against_plain.inverted()
    interval = f"{speedup.median:.2f}x [{speedup.low:.2f}, {speedup.high:.2f}] over {speedup.rounds} rounds"
    if against_plain.high < 1:
        return DraftShapeDecision(current, True, speedup, f"{current!r} is faster than plain decoding: {interval}")
    if against_plain.low > 1:
        return DraftShapeDecision(0, True, speedup, f"plain decoding is faster than {current!r} ({interval})")
    return DraftShapeDecision(0, False, speedup, f"undecided: {current!r} at {interval} against plain decoding, "
                                                 "within the noise; plain decoding until measured again")


__all__ = ["MIN_ADVANTAGE", "NOTCH", "DraftShapeDecision", "PairedRatio", "decide_draft_shape", "paired_ratio"]
