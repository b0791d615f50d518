"""Cost accounting from token usage, and the --max-cost budget.

Before a request is sent its cost is estimated from the prompt length and
reserved; the reply's token usage then replaces the estimate. A request
whose estimate would take spending past the budget is not sent.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from study.judge.config import Price
from study.judge.scoring import Usage

log = logging.getLogger(__name__)

# Tokens per chat message for role markers (an estimate, not a provider figure).
MESSAGE_OVERHEAD_TOKENS = 8
# English text runs about 4 UTF-8 bytes per token; dividing by 3 overestimates on purpose.
# NOTE: --max-cost holds only while estimates are upper bounds; text with fewer bytes per token can exceed them.
BYTES_PER_TOKEN_ESTIMATE = 3.0


def estimate_input_tokens(messages: list[dict]) -> int:
    """Return an upper estimate of a prompt's input tokens from its UTF-8 length."""
    total = 0
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + math.ceil(len(message["content"].encode("utf-8")) / BYTES_PER_TOKEN_ESTIMATE)
    return total


def price_of(price: Price | None, usage: Usage, batch: bool = False) -> float:
    if price is None:
        return 0.0
    cost = (usage.input_tokens * price.input + usage.output_tokens * price.output) / 1e6
    return cost * (1.0 - price.batch_discount) if batch else cost


class BudgetExceeded(Exception):
    """Raised instead of sending a request that could take spending past --max-cost."""


@dataclass
class CostLedger:
    """Spending of one command: settled costs plus reservations for requests in flight."""

    max_cost: float | None = None
    spent: float = 0.0
    reserved: float = 0.0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    stopped: bool = False

    def reserve(self, estimate: float) -> None:
        """Reserve ``estimate`` USD or raise BudgetExceeded (and stop all later requests)."""
        if self.max_cost is not None and (self.stopped or self.spent + self.reserved + estimate > self.max_cost):
            if not self.stopped:
                log.warning(
                    "stopping: $%.4f spent or reserved, and the next request (about $%.4f) would exceed "
                    "--max-cost $%.4f",
                    self.spent + self.reserved, estimate, self.max_cost,
                )
            self.stopped = True
            raise BudgetExceeded(f"max cost ${self.max_cost:.4f} reached")
        self.reserved += estimate

    def settle(self, estimate: float, actual: float, usage: Usage) -> None:
        self.reserved = max(0.0, self.reserved - estimate)
        self.spent += actual
        self.requests += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        if actual > estimate:
            log.warning("a request cost $%.6f, above its estimate $%.6f", actual, estimate)

    def release(self, estimate: float) -> None:
        self.reserved = max(0.0, self.reserved - estimate)

    def summary(self) -> dict:
        return {
            "spent_usd": self.spent,
            "max_cost_usd": self.max_cost,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "stopped_at_max_cost": self.stopped,
        }
