"""SDK: how long to wait before retrying: exponential backoff with full jitter (AWS's "Exponential
Backoff and Jitter"), never shorter than the RetryInfo delay the server asked for."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays for consecutive failures; `reset()` after a success.

    >>> b = Backoff(initial=0.1, maximum=5.0)
    >>> b.next()                    # uniform in [0, 0.1]
    >>> b.next(retry_after=2.0)     # at least 2.0, as the server asked
    """

    initial: float = 0.1
    maximum: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self, retry_after: float | None = None) -> float:
        # Cap the exponent so 2**attempt never overflows on a long outage.
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        delay = self.rng.uniform(0.0, ceiling)
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        return delay

    def reset(self) -> None:
        self.attempt = 0
