"""An admin routes decision point B to a model on the settings page; the next classification shows that
backend, and its cost appears in usage. The model is a real HTTP server speaking the chat API."""

from __future__ import annotations

import httpx2
import pytest

from server.config import ProviderSettings, Settings
from tests.fake_llm import FakeLLM, Reply, answer
from tests.web.conftest import WebTier, csrf_token
from tests.web.pages import events, settings_form

MODEL = "fake:triage-model"


@pytest.fixture
def settings(settings: Settings, fake_llm: FakeLLM) -> Settings:
    return settings.model_copy(
        update={"openai_providers": {"fake": ProviderSettings(base_url=fake_llm.url)}, "cache_ttl_seconds": 0}
    )


async def test_an_admin_routes_high_risk_to_a_model_and_sees_its_cost_in_usage(
    web: WebTier, admin: httpx2.AsyncClient, fake_llm: FakeLLM
) -> None:
    form = settings_form((await admin.get("/admin/settings")).text)
    # A model backend needs a price first: 1 USD per million input tokens, 4 per million output tokens.
    priced = await admin.post(
        "/admin/settings",
        data=form | {"prices.new.backend": MODEL, "prices.new.input_usd": "1", "prices.new.output_usd": "4"},
    )
    assert priced.status_code == 200, priced.text
    form = settings_form(priced.text)
    routed = await admin.post(
        "/admin/settings",
        data=form
        | {
            "steps.high_risk.backend": MODEL,
            "steps.high_risk.strategy": "most_urgent",
            "steps.narrative.backend": MODEL,
            "steps.narrative.strategy": "model",
        },
    )
    assert routed.status_code == 200, routed.text
    assert "Saved as version 2: high_risk.backend, high_risk.strategy, narrative.backend, narrative.strategy." in (
        routed.text
    )

    # The next case on the demo page shows the model's answer and its backend, and its narrative as it comes.
    fake_llm.plan("high_risk", answer(high_risk=True, reasons=["thunderclap onset"]))
    fake_llm.plan("narrative", Reply(chunks=("Sudden severe headache ", "needs a physician now."), output_tokens=30))
    async with web.browser() as visitor:
        page = await visitor.get("/")
        form = {"csrf_token": csrf_token(page.text), "age.value": "30", "age.unit": "years"}
        streamed = await visitor.post(
            "/explain", data=form | {"chief_complaint": "headache"}, headers={"Accept": "text/event-stream"}
        )
    stream = events(streamed.text)
    narrative = [data["text"] for name, data in stream if name == "narrative"]
    assert narrative == ["Sudden severe headache ", "Sudden severe headache needs a physician now."]
    result = next(data["html"] for name, data in stream if name == "result")
    assert 'data-level="2"' in result
    assert f'B. High risk: <span class="backend">{MODEL}</span>' in result
    assert "thunderclap onset" in result
    # Each model call: 200 input and 30 output tokens at 1 and 4 USD per million, 320 micro-dollars.
    assert "cost 0.00064 US dollars" in result

    page = await admin.get("/admin/usage")
    usage = page.text[page.text.index('<div id="usage">') :]
    assert usage.count("<svg") >= 4  # the global budget, cost and requests by day, cost by backend
    assert 'role="img"' in usage
    for caption in ("By day", "By step", "By backend", "By key"):
        assert f"<caption>{caption}</caption>" in usage
    assert f'<tr><th scope="row">{MODEL}</th><td>2</td><td>400</td><td>60</td><td>0.00064</td></tr>' in usage
    assert "test-gateway (" in usage  # the key that made the call, by its name
    assert "0.00064 of 20.00 US dollars spent" in usage

    empty = await admin.get("/admin/usage", params={"start": "2020-01-01", "end": "2020-01-31"})
    assert "No usage in this range." in empty.text
    wrong = await admin.get("/admin/usage", params={"start": "2020-02-01", "end": "2020-01-01"})
    assert wrong.status_code == 400
