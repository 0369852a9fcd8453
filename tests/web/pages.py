"""What the security tests look for in a page: its markup as a browser would parse it."""

from __future__ import annotations

from html.parser import HTMLParser

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
