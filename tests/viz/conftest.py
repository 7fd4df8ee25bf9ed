"""``check_page(index_html)``: an offline check of a generated web page (no browser)."""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Page(HTMLParser):
    """Collects ``<img src>`` / ``<a href>`` and checks that every non-void tag is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
            if not a.get("alt"):
                self.errors.append(f"<img src={a.get('src')!r}> without alt text")
        if tag == "a":
            self.links.append(a.get("href") or "")
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def _check_page(index: Path) -> _Page:
    """Parse ``index``; assert it is balanced HTML whose every image and link is a relative
    path to a file that exists (offline: no scheme, no absolute path). Returns the parse."""
    text = index.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html>")
    page = _Page()
    page.feed(text)
    page.close()
    assert not page.errors, page.errors
    assert not page.stack, f"unclosed tags: {page.stack}"
    for ref in page.images + page.links:
        parts = urlsplit(ref)
        assert ref and not parts.scheme and not parts.netloc and not ref.startswith("/"), ref
        target = (index.parent / unquote(parts.path)).resolve()
        assert target.is_file(), f"{ref} -> {target} does not exist"
        assert index.parent.resolve() in target.parents, f"{ref} leaves the page's folder"
    return page


@pytest.fixture
def check_page() -> Callable[[Path], _Page]:
    return _check_page
