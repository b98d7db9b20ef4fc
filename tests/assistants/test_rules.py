"""The assistants rules that need no stack: plan table, context fitting, event rendering."""

from __future__ import annotations

from typing import Any

from assistants import service
from assistants.schemas import IncomingEvent


def test_plan_limits_default_to_the_reference_table() -> None:
    table = {p: service.plan_limits(p) for p in ("hobby", "starter", "pro", "team")}
    assert {p: t.requests_per_minute for p, t in table.items()} == {
        "hobby": 60,
        "starter": 300,
        "pro": 1000,
        "team": 5000,
    }
    assert {p: t.sockets for p, t in table.items()} == {
        "hobby": 1,
        "starter": 3,
        "pro": 10,
        "team": 0,  # unlimited
    }


def test_fit_context_drops_oldest_turns_and_keeps_the_system_prompt() -> None:
    messages = [{"role": "system", "content": "s" * 10}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}" * 10} for i in range(6)
    ]

    def count(msgs: list[dict[str, str]]) -> int:
        return sum(len(m["content"]) for m in msgs)

    fitted, dropped = service.fit_context(messages, count, 45)
    assert fitted[0]["role"] == "system"
    assert [m["content"][0] for m in fitted[1:]] == ["3", "4", "5"]
    assert dropped == 3
    # The last message is kept even when it alone is over the budget.
    fitted, dropped = service.fit_context(messages, count, 5)
    assert [m["content"][0] for m in fitted] == ["s", "5"] and dropped == 5


def test_render_event_fills_the_template() -> None:
    class Instance:
        message_template = "[{event}] {payload} ({event})"

    event = IncomingEvent(event="order.paid", payload={"b": 2, "a": [1, None]})
    rendered = service.render_event(Instance(), event)  # type: ignore[arg-type]
    assert rendered == '[order.paid] {"a":[1,null],"b":2} (order.paid)'
    empty: Any = IncomingEvent(event="ping")
    assert service.render_event(Instance(), empty) == "[ping] null (ping)"  # type: ignore[arg-type]
