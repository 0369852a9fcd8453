"""The public demo over HTTP: the case form, Explain streamed as server-sent events (and the page without
script), the API's validation messages, the 20-a-day limit per visitor, and nothing of a case in the logs."""

from __future__ import annotations

import logging
import re

import httpx2
import pytest

from server.app import TriageServer
from server.calls import Role
from tests.web.conftest import StartWeb, csrf_token
from tests.web.pages import XSS, assert_inert, events, markup
from triage_web.case_form import FORM_NAMES, error_id

STREAM = {"Accept": "text/event-stream"}


async def case(browser: httpx2.AsyncClient, **fields: str) -> dict[str, str]:
    """The demo form filled in as a visitor would: a 67-year-old with chest pain, unless `fields` say otherwise."""
    page = await browser.get("/")
    return {"csrf_token": csrf_token(page.text), "age.value": "67", "age.unit": "years"} | {
        "chief_complaint": "chest pain",
        **{name.replace("__", "."): value for name, value in fields.items()},
    }


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert match is not None, element_id
    return match[1].strip()


async def test_the_form_names_its_inputs_after_the_case_fields_with_labels_and_constraints(
    browser: httpx2.AsyncClient,
) -> None:
    page = await browser.get("/")
    assert page.status_code == 200
    parsed = markup(page.text)
    inputs = {a["name"]: a for tag, a in parsed.tags if tag in ("input", "select", "textarea") and a.get("name")}
    assert set(inputs) - {"csrf_token"} == FORM_NAMES
    labelled = {a["for"] for tag, a in parsed.tags if tag == "label"}
    for name, attributes in inputs.items():
        if attributes.get("type") != "hidden":
            assert attributes["id"] in labelled, name
    for name in FORM_NAMES - {"age.unit"}:
        assert f'id="{error_id(name)}"' in page.text, name
    assert 'id="case-form"' in page.text
    assert 'id="submit-case"' in page.text
    assert '<div id="result-error" role="alert">' in page.text
    assert 'id="rate-limit"' in page.text
    assert '<html lang="en">' in page.text
    assert page.text.count("<fieldset") == page.text.count("<legend>") >= 5
    assert "Clinical decision support, not a diagnosis" in page.text
    # The browser checks what it can before sending.
    assert {"required", "maxlength"} <= set(inputs["chief_complaint"])
    assert inputs["vitals.spo2_percent"]["max"] == "100"
    assert inputs["age.value"]["min"] == "0"


async def test_a_case_is_explained_live_as_server_sent_events(browser: httpx2.AsyncClient) -> None:
    async with browser.stream("POST", "/explain", data=await case(browser), headers=STREAM) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [chunk async for chunk in response.aiter_text()]
    stream = events("".join(chunks))
    names = [name for name, _ in stream]
    assert names[0] == "ratelimit"
    assert names.count("step") >= 3  # A, B (which settles it) and the review
    assert names[-2:] == ["result", "done"]
    assert len(chunks) > 2  # sent as they came, not as one body
    assert "<strong>19</strong> of 20 calls left today" in stream[0][1]["html"]
    steps = [data["html"] for name, data in stream if name == "step"]
    assert all(step.lstrip().startswith('<li class="step') for step in steps)
    assert any("B. High risk" in step for step in steps)
    result = stream[-2][1]["html"]
    assert '<article id="result" class="result-card level-2" data-level="2"' in result
    assert "Emergent" in result
    assert "(from Chief complaint)" in result
    assert "not a diagnosis" in result


async def test_without_script_the_result_comes_back_as_a_page(browser: httpx2.AsyncClient) -> None:
    form = await case(browser, chief_complaint="ankle sprain after a fall", age__value="25", vitals__pain_score="4")
    page = await browser.post("/explain", data=form)
    assert page.status_code == 200
    assert re.search(r'<article id="result" class="result-card level-\d" data-level="[345]"', page.text)
    steps = page.text[page.text.index('<ol id="steps"') : page.text.index("</ol>", page.text.index('<ol id="steps"'))]
    assert steps.count('<li class="step') >= 4
    assert "<strong>19</strong> of 20 calls left today" in page.text
    assert 'value="ankle sprain after a fall"' in page.text  # the form keeps what was typed
    assert_inert(page.text, shown=False)
    # Where no proxy is trusted, a visitor cannot claim another address to get more calls.
    spoofed = await browser.post("/explain", data=form, headers={"X-Forwarded-For": "192.0.2.1"})
    assert "<strong>18</strong> of 20 calls left today" in spoofed.text


async def test_the_api_s_validation_messages_are_shown_next_to_their_inputs(browser: httpx2.AsyncClient) -> None:
    form = await case(browser, age__value="0", vitals__spo2_percent="150", chief_complaint=" ")
    page = await browser.post("/explain", data=form)
    assert page.status_code == 422
    assert text_of(page.text, error_id("age.value")).startswith("must be at least 1: give months or days")
    assert text_of(page.text, error_id("vitals.spo2_percent")) == "must be between 0 and 100 %; got 150"
    assert text_of(page.text, error_id("chief_complaint")) == "the chief complaint is required"
    assert 'id="f-vitals-spo2_percent"' in page.text
    assert re.search(r'name="vitals.spo2_percent"[^>]*value="150"[^>]*aria-invalid="true"', page.text)
    assert "<strong>19</strong> of 20 calls left today" in page.text  # the server counted the call

    streamed = await browser.post("/explain", data=form, headers=STREAM)
    assert streamed.status_code == 422
    [(counted, _), (name, data), (last, _)] = events(streamed.text)
    assert (counted, name, last) == ("ratelimit", "invalid", "done")
    assert data["errors"][error_id("vitals.spo2_percent")] == "must be between 0 and 100 %; got 150"
    assert "f-age-value" in data["inputs"]

    # What the case cannot hold is refused here, without a call (the visitor's count is untouched).
    not_a_number = await browser.post("/explain", data=await case(browser, vitals__heart_rate_bpm="fast"))
    assert not_a_number.status_code == 422
    assert text_of(not_a_number.text, error_id("vitals.heart_rate_bpm")) == "must be a number"
    page = await browser.post("/explain", data=await case(browser))
    assert "<strong>17</strong> of 20 calls left today" in page.text


async def test_the_21st_call_of_the_day_is_refused_with_the_time_it_resets(
    start_web: StartWeb, server: TriageServer, keys: dict[Role, str]
) -> None:
    # Behind a proxy on this machine the web tier takes the visitor's address from X-Forwarded-For.
    web = await start_web(
        target=f"127.0.0.1:{server.port}", api_key=keys[Role.GATEWAY], forwarded_allow_ips="127.0.0.1"
    )
    visitor = {"X-Forwarded-For": "203.0.113.7"}
    async with web.browser(headers=visitor) as browser:
        form = await case(browser)
        for used in range(1, 21):
            page = await browser.post("/explain", data=form)
            assert page.status_code == 200
            assert f"<strong>{20 - used}</strong> of 20 calls left today" in page.text
        refused = await browser.post("/explain", data=form)
        assert refused.status_code == 429
        message = text_of(refused.text, "result-error")
        assert re.fullmatch(
            r"<p>You have used all 20 demo classifications allowed for today\. "
            r"You can try again at \d\d:\d\d UTC \(in 2[34] h \d+ min\)\.",
            message,
        ), message
        assert 'id="result"' not in refused.text
        streamed = await browser.post("/explain", data=form, headers=STREAM)
        assert streamed.status_code == 429
        assert [name for name, _ in events(streamed.text)] == ["ratelimit", "error", "done"]

    # Another visitor has their own 20.
    async with web.browser(headers={"X-Forwarded-For": "198.51.100.4"}) as other:
        page = await other.post("/explain", data=await case(other))
        assert "<strong>19</strong> of 20 calls left today" in page.text


async def test_case_text_is_inert_in_the_result_and_in_the_form(browser: httpx2.AsyncClient) -> None:
    form = await case(browser, chief_complaint=f"chest pain {XSS}", history=XSS)
    page = await browser.post("/explain", data=form)
    assert page.status_code == 200
    assert_inert(page.text)
    for name, data in events((await browser.post("/explain", data=form, headers=STREAM)).text):
        if "html" in data:
            assert_inert(data["html"], shown=False)
            assert XSS not in data["html"], name
    invalid = await browser.post("/explain", data=form | {"age.value": "0"})
    assert invalid.status_code == 422
    assert_inert(invalid.text)


async def test_no_patient_content_reaches_the_logs(
    browser: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    marker = "MARKER-7f3a9c patient says her name is Jane Roe"
    caplog.set_level(logging.DEBUG)
    form = await case(browser, chief_complaint=f"chest pain {marker}", history=marker)
    await browser.post("/explain", data=form)
    await browser.post("/explain", data=form, headers=STREAM)
    await browser.post("/explain", data=form | {"age.value": "0", "vitals.gcs": "2"})
    await browser.post("/explain", data=form | {"vitals.gcs": "many"})
    await browser.post("/explain", data=form | {"csrf_token": "forged"}, headers={"Origin": "https://evil.example"})
    assert caplog.records
    for record in caplog.records:
        assert "MARKER-7f3a9c" not in f"{record.getMessage()} {record.exc_text or ''} {record.args}"
