"""A request's cost comes from prices asked of the plugin once, until the live providers change."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from providers.usage.recorder import MODEL_KEPT_MAX, PRICES_KEPT, PriceBook, model_prices, priced


def cost_of(registry, provider, model, prompt_tokens, completion_tokens):
    """The cost asked afresh of the plugin, as before any price was kept."""
    return priced(model_prices(registry, provider, model), prompt_tokens, completion_tokens)


class Plugin:
    """A live provider whose model prices are what the test says, counting how often it is asked."""

    def __init__(self, prices: dict[str, Any]) -> None:
        self.prices = prices
        self.asked = 0

    def get_model_info(self, model: str) -> dict[str, Any] | None:
        self.asked += 1
        if model == "broken":
            raise KeyError(model)
        return {
            "input_cost_per_token": self.prices.get("in"),
            "output_cost_per_token": self.prices.get("out"),
        }


class Registry:
    """The registry's face a price book sees: its providers and how often they changed."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.changes = 0

    def __contains__(self, name: str) -> bool:
        return name == "p"

    def get(self, name: str) -> Plugin:
        return self.plugin


def test_prices_are_asked_once_and_cost_what_cost_of_says() -> None:
    plugin = Plugin({"in": 0.15e-6, "out": 0.6e-6})
    registry = Registry(plugin)
    book = PriceBook(registry)
    costs = [book.cost("p", "m", 1000, 500) for _ in range(5)]
    assert plugin.asked == 1
    assert costs == [cost_of(registry, "p", "m", 1000, 500)] * 5
    assert costs[0] == Decimal("0.00015") + Decimal("0.0003")


def test_a_provider_change_makes_every_kept_price_stale() -> None:
    plugin = Plugin({"in": 1e-6, "out": 1e-6})
    registry = Registry(plugin)
    book = PriceBook(registry)
    assert book.cost("p", "m", 10, 0) == Decimal("0.00001")
    plugin.prices = {"in": 2e-6, "out": 2e-6}  # a new instance, new settings: a change
    registry.changes += 1
    assert book.cost("p", "m", 10, 0) == Decimal("0.00002")
    assert plugin.asked == 2


@pytest.mark.parametrize(
    "prices, model",
    [
        ({"in": 1e-6}, "m"),  # one price missing
        ({"in": "cheap", "out": 1e-6}, "m"),  # not a number
        ({"in": float("inf"), "out": 1e-6}, "m"),  # infinite
        ({"in": 1e30, "out": 1e-6}, "m"),  # beyond any storable cost
        ({"in": 1e-6, "out": 1e-6}, "broken"),  # the plugin raises
        ({"in": 1e-6, "out": 1e-6}, ""),  # no model
    ],
)
def test_no_usable_price_is_no_cost(prices, model) -> None:
    book = PriceBook(Registry(Plugin(prices)))
    assert book.cost("p", model, 10, 10) is None
    assert book.cost("p", model, 10, 10) is None  # and again, from the book
    assert book.cost("unknown-provider", "m", 10, 10) is None


def test_clients_model_names_cannot_grow_the_book() -> None:
    plugin = Plugin({"in": 1e-6, "out": 1e-6})
    book = PriceBook(Registry(plugin))
    for n in range(PRICES_KEPT * 3):
        assert book.cost("p", f"model-{n}", 1, 0) == Decimal("0.000001")
        assert len(book) <= PRICES_KEPT
    huge = "m" * (MODEL_KEPT_MAX + 1)
    before = len(book)
    assert book.cost("p", huge, 1, 0) == Decimal("0.000001")
    assert len(book) == before  # priced, never kept
    registry = Registry(plugin)
    assert book.cost("p", 12345, 1, 0) == cost_of(registry, "p", 12345, 1, 0)  # type: ignore[arg-type]
    assert len(book) == before  # not a name: never kept
