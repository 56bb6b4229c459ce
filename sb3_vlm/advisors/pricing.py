"""
What a VLM's answers cost: a price table per model, the cost of a response's usage, and a hard budget in dollars.

The prices are list prices in US dollars per million tokens (standard tier, text and image input alike, as the
providers bill image inputs in tokens), recorded on :data:`PRICES_AS_OF`. Providers change them: pass ``price=`` to
an advisor (or ``PRICES`` a new entry) to use your own. A model the table does not know (a local vLLM / Ollama
server) has no price: its tokens are counted but its cost is not, and a dollar budget needs an explicit price.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

#: when the prices of :data:`PRICES` were read off the providers' pricing pages
PRICES_AS_OF = "2025-06-01"


@dataclass(frozen=True)
class Price:
    """
    A model's price in US dollars per million tokens.

    :param input_per_mtok: prompt tokens (text and images)
    :param output_per_mtok: generated tokens
    """

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0 and value < float("inf")):
                raise ValueError(f"Price.{name} must be a finite number >= 0 (USD per million tokens), got {value!r}")

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """The cost in US dollars of a response that used ``tokens_in`` prompt and ``tokens_out`` answer tokens."""
        return (tokens_in * self.input_per_mtok + tokens_out * self.output_per_mtok) / 1e6


#: list prices (USD per million tokens, standard tier) on :data:`PRICES_AS_OF`; keys are model names as the APIs
#: take them, matched exactly or as the longest key that a dated or versioned name starts with
#: (``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``, ``models/gemini-2.0-flash-001`` is ``gemini-2.0-flash``; see
#: :func:`price_for`)
PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gemini-1.5-flash": Price(0.075, 0.30),
    "gemini-1.5-pro": Price(1.25, 5.00),
    "gemini-2.0-flash": Price(0.10, 0.40),
    "gemini-2.0-flash-lite": Price(0.075, 0.30),
    "gemini-2.5-flash": Price(0.30, 2.50),
    "gemini-2.5-pro": Price(1.25, 10.00),
}


#: what may follow a table key in a model name that it prices: a dated or numbered version, or a release tag
_VERSION = re.compile(r"[-@](\d[\w.-]*|latest|exp[\w.-]*|preview[\w.-]*)")


def price_for(
    model: str, override: Price | tuple[float, float] | None = None, table: Mapping[str, Price] = PRICES
) -> Price | None:
    """
    The price of ``model``: ``override`` when given (a :class:`Price` or ``(input, output)`` USD per million tokens),
    else its entry in ``table`` (exact, else the longest key that the name extends by a version: a date, a number,
    ``latest``, ``exp`` or ``preview``; a ``models/`` prefix and case ignored), else None. Another suffix names
    another model (``gpt-4o-audio-preview`` is not ``gpt-4o``), which has no price here.
    """
    if override is not None:
        return override if isinstance(override, Price) else Price(*override)
    name = model.strip().lower().removeprefix("models/")
    if name in table:
        return table[name]
    prefixes = [key for key in table if name.startswith(key) and _VERSION.fullmatch(name[len(key) :])]
    return table[max(prefixes, key=len)] if prefixes else None


class CostBudget:
    """
    A hard budget in dollars for requests whose cost is known only when their answer comes back (thread-safe).

    A request may be sent only if what was spent, plus what the requests in flight may still cost, plus what this
    one may cost stays within ``max_usd``. What a request may cost is bounded from above by its answer (``max_tokens``
    answer tokens per answer and call, which the server enforces) and, for the prompt, by the largest prompt seen so
    far plus ``prompt_margin`` (a teacher's prompts are one template and one image size, so they vary little). Until
    the first answer has shown the prompt's size, one request is in flight at a time. So the budget holds unless a
    prompt is more than ``prompt_margin`` larger than every one before it, or the very first request alone costs
    more than the whole budget (warned about: the budget is then too small for this model).

    :param max_usd: the budget
    :param price: the model's price
    :param prompt_margin: the headroom on the largest prompt seen (0.25: 25 % larger)
    """

    def __init__(self, max_usd: float, price: Price, prompt_margin: float = 0.25):
        if not (isinstance(max_usd, int | float) and 0 <= max_usd < float("inf")):
            raise ValueError(f"max_cost_usd must be a finite number >= 0, got {max_usd!r}")
        if not prompt_margin >= 0:
            raise ValueError(f"prompt_margin must be >= 0, got {prompt_margin!r}")
        self.max_usd, self.price, self.prompt_margin = float(max_usd), price, prompt_margin
        self.spent = 0.0
        self.reserved = 0.0
        self.in_flight = 0
        self.largest_prompt: int | None = None  # prompt tokens of the largest request seen
        self._lock = threading.Lock()
        self._first_done = threading.Condition(self._lock)

    def bound(self, calls: int, answer_tokens: int) -> float:
        """
        What one more request may cost at most: ``calls`` backend calls, each with a prompt no larger than the
        largest seen plus the margin, and ``answer_tokens`` answer tokens in all (``max_tokens`` x answers x calls).
        """
        prompt = 0 if self.largest_prompt is None else int(self.largest_prompt * (1.0 + self.prompt_margin)) + 1
        return self.price.cost(calls * prompt, answer_tokens)

    def reserve(self, calls: int, answer_tokens: int) -> float | None:
        """Reserve what one more request may cost (:meth:`bound`); None when that would break the budget (the
        request is not sent)."""
        with self._first_done:
            while self.largest_prompt is None and self.in_flight > 0:  # the first answer shows the prompt's size
                self._first_done.wait()
            bound = self.bound(calls, answer_tokens)
            if self.spent + self.reserved + bound > self.max_usd:
                return None
            self.reserved += bound
            self.in_flight += 1
            return bound

    def settle(self, reserved: float, tokens_in: int, tokens_out: int, prompts: int = 1) -> float:
        """
        A reserved request ended: release its reservation and charge what it used (0 tokens for a failed request);
        returns its cost. ``tokens_in`` is over its ``prompts`` calls (the largest prompt per call is what
        :meth:`bound` extrapolates from).
        """
        cost = self.price.cost(tokens_in, tokens_out)
        with self._first_done:
            self.reserved = max(self.reserved - reserved, 0.0)
            self.in_flight -= 1
            self.spent += cost
            if tokens_in > 0:
                per_prompt = -(-tokens_in // max(prompts, 1))
                self.largest_prompt = max(self.largest_prompt or 0, per_prompt)
            self._first_done.notify_all()
        return cost

    @property
    def exceeded(self) -> bool:
        """Whether more than the budget was spent (only a first request dearer than the whole budget can do it)."""
        return self.spent > self.max_usd
