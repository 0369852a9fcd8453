"""What the tests read in the web tier's answers: markup as a browser parses it, forms, server-sent events."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

# One payload for every text field: were it not escaped, it would add a script, an event handler, an
# element and an attribute.
XSS = """XSS"'><script>alert(1)</script><img src=x onerror=alert(2)><b onclick=alert(3)>bold</b>"""


class Markup(HTMLParser):
    """The elements and attributes of a page, and the scripts and styles it would run inline."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script" and not dict(attrs).get("src"):
            self.inline_scripts += 1

    @property
    def problems(self) -> list[str]:
        """Everything in the page that a strict CSP would block or that an injection would have added."""
        found = [f"{self.inline_scripts} inline script(s)"] if self.inline_scripts else []
        for tag, attrs in self.tags:
            if tag in ("style", "img", "b", "iframe", "object", "embed", "base"):
                found.append(f"a <{tag}> element")
            found += [f"<{tag} {name}=...>" for name in attrs if name.startswith("on") or name == "style"]
            found += [f"<{tag}> with a javascript: URL" for value in attrs.values() if value and "javascript:" in value]
        return found


def markup(html: str) -> Markup:
    parsed = Markup()
    parsed.feed(html)
    parsed.close()
    return parsed


def assert_inert(html: str, *, shown: bool = True) -> None:
    """The page adds nothing that runs or renders from the payload; with `shown`, it shows it as text."""
    parsed = markup(html)
    assert parsed.problems == []
    assert XSS not in html
    if shown:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def settings_form(html: str) -> dict[str, str]:
    """The settings form's fields as the page filled them in (inputs and each select's selected option)."""
    form = html[html.index('id="settings-form"') : html.index("</form>", html.index('id="settings-form"'))]
    values = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form))
    for name, options in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        selected = re.search(r'<option value="([^"]*)" selected>', options)
        assert selected is not None, name
        values[name] = selected[1]
    return values


def events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a response body, parsed as the page's script does."""
    found = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line)
        if lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found
