"""The ``web`` plugin: ``web_search`` (through a ``SearchEngine``; SearXNG is the one built in) and
``fetch_url`` (``net.fetch`` behind the SSRF guard, the main text extracted by trafilatura).

Results and pages go to the model as plain text, as they are: a page saying "ignore previous
instructions" says it in the output too. Framing tool output as untrusted data is the tool-calling
loop's job; this module neither strips nor interprets what it reads.
"""
from __future__ import annotations

import contextlib
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx
from charset_normalizer import from_bytes

from features.plugins import net
from features.plugins.base import ToolContext, ToolOutcome, ToolSpec, cut, short, text_arg
from features.plugins.errors import BadArguments, FetchError, PluginError, SearchError
from i18n import _

__all__ = [
    "DEFAULT_RESULTS",
    "MAX_ELEMENTS",
    "MAX_RESULTS",
    "FetchUrl",
    "SearchEngine",
    "SearchResult",
    "SearxngEngine",
    "WebSearch",
    "extract_text",
    "format_results",
    "page_label",
    "parse_searxng",
]

log = logging.getLogger(__name__)

DEFAULT_RESULTS = 5
MAX_RESULTS = 10
MAX_ELEMENTS = 15_000  # HTML elements above which a page's text is all its text (trafilatura's baseline)
_HTML = {"text/html", "application/xhtml+xml", ""}
_TEXT = {"application/json", "application/xml", "application/ld+json"}


# ---------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchResult:
    """One hit: its title, its URL and the engine's snippet (may be empty)."""

    title: str
    url: str
    snippet: str


class SearchEngine(Protocol):
    """A web search backend. ``search`` returns at most ``limit`` results, best first; it raises
    ``SearchError`` (never another exception for an engine's failure: unreachable, an HTTP error,
    an answer it cannot read, too slow)."""

    name: str

    async def search(self, query: str, limit: int) -> list[SearchResult]: ...


class SearxngEngine:
    """A SearXNG instance's JSON API: ``GET {base_url}/search?q=…&format=json`` (the instance must
    list ``json`` in ``search.formats`` of its settings.yml, else it answers 403). The instance is
    the operator's, so it may be on a private address: no SSRF guard here. ``timeout_s``: the
    whole request; ``max_bytes``: the largest answer read."""

    name = "searxng"

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, max_bytes: int = 2_000_000) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    async def search(self, query: str, limit: int) -> list[SearchResult]:
        """See ``SearchEngine``."""
        url = f"{self.base_url}/search"
        try:
            with anyio.fail_after(self.timeout_s):
                async with httpx.AsyncClient(timeout=self.timeout_s) as client, \
                        client.stream("GET", url, params={"q": query, "format": "json"},
                                      headers={"Accept": "application/json"}) as response:
                    if response.status_code == 403:
                        raise SearchError("the search engine refused the JSON API (403): enable it in SearXNG's "
                                          "settings.yml, search: formats: [html, json]")
                    if response.status_code >= 400:
                        raise SearchError(f"the search engine answered HTTP {response.status_code} {response.reason_phrase}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise SearchError(f"the search engine's answer is larger than {self.max_bytes} bytes")
        except TimeoutError:
            raise SearchError(f"the search engine did not answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise SearchError(f"the search engine cannot be reached: {type(exc).__name__}: {exc}") from None
        return parse_searxng(bytes(body), limit)


def parse_searxng(body: bytes, limit: int) -> list[SearchResult]:
    """The first ``limit`` results of a SearXNG JSON answer (``{"results": [{"title", "url",
    "content"}, …]}``); results without a URL are skipped, and a URL seen before. Raises
    ``SearchError`` when ``body`` is not such JSON."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SearchError("the search engine's answer is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise SearchError("the search engine's answer has no results list")
    out: list[SearchResult] = []
    seen: set[str] = set()
    for item in data["results"]:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str) or item["url"] in seen:
            continue
        seen.add(item["url"])
        title, snippet = item.get("title"), item.get("content")
        out.append(SearchResult(" ".join(str(title or "").split()), item["url"], " ".join(str(snippet or "").split())))
        if len(out) >= limit:
            break
    return out


def format_results(query: str, results: list[SearchResult]) -> str:
    """The results as numbered plain text for the model."""
    if not results:
        return f"No results for {query!r}."
    lines = [f"Web search results for {query!r}:"]
    for i, r in enumerate(results, 1):
        lines.append(f"\n{i}. {r.title or r.url}\n   {r.url}")
        if r.snippet:
            lines.append(f"   {r.snippet}")
    return "\n".join(lines)


class WebSearch:
    """The ``web_search`` tool (plugin ``web``): args ``{"query": "…", "max_results": 5}`` → the top
    results (title, URL, snippet) as text, cut to ``output_chars``. An engine's failure is an error
    outcome."""

    plugin = "web"
    spec = ToolSpec(
        name="web_search",
        description=("Search the web. Returns the top results: title, URL and a snippet each. "
                     "Use it for current events and facts you are unsure of; read a result with fetch_url "
                     "when it is offered and the snippet is not enough."),
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "the search query"},
                "max_results": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS,
                                "description": f"how many results (default {DEFAULT_RESULTS})"},
            },
            "required": ["query"],
        },
    )

    def __init__(self, engine: SearchEngine, *, output_chars: int = 8000) -> None:
        self.engine = engine
        self.output_chars = output_chars

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """See the class."""
        try:
            query = text_arg(args, "query", max_chars=500)
            assert query is not None
            limit = args.get("max_results", DEFAULT_RESULTS)
            if limit is None:
                limit = DEFAULT_RESULTS
            if isinstance(limit, bool) or not isinstance(limit, int | float) or limit != int(limit):
                raise BadArguments("argument 'max_results' must be a whole number")
            results = await self.engine.search(query, max(1, min(MAX_RESULTS, int(limit))))
        except PluginError as exc:
            return ToolOutcome(str(exc), error=True)
        except Exception as exc:  # an engine's bug must not end the turn: the model hears it failed
            log.exception("web_search through %s failed", self.engine.name)
            return ToolOutcome(f"the search failed: {type(exc).__name__}", error=True)
        return ToolOutcome(cut(format_results(query, results), self.output_chars))

    def notice(self, args: dict[str, Any]) -> str:
        query = args.get("query") if isinstance(args, dict) else None
        return _("🌐 searched the web for '{query}'", query=short(str(query or "?"), 60))


# ---------------------------------------------------------------- fetch


def extract_text(page: net.Page) -> tuple[str | None, str]:
    """(title, main text) of ``page``: for HTML the main content by trafilatura (boilerplate such
    as menus and footers left out; all the page's text when it finds no main content, or when the
    page has more than ``MAX_ELEMENTS`` elements, which would keep trafilatura busy for seconds),
    other text types decoded as they are. Raises ``FetchError`` for a type that is not text (PDF, images…).
    Blocking (parsing): call it in a worker thread."""
    if page.content_type in _HTML:
        import trafilatura  # deferred: trafilatura, lxml (~250 ms), only when a page is fetched

        html: str | bytes = page.body
        if page.charset:
            with contextlib.suppress(LookupError):  # an unknown charset name: let trafilatura guess
                html = page.body.decode(page.charset, errors="replace")
        tree = trafilatura.load_html(html)
        if tree is None:
            return None, ""
        if sum(1 for _ in tree.iter()) > MAX_ELEMENTS:  # trafilatura's time grows with the elements (~0.2 ms each)
            return None, trafilatura.html2txt(tree).strip()
        document = trafilatura.bare_extraction(tree, url=page.url, with_metadata=True, favor_recall=True,
                                               include_comments=False, include_tables=True)
        title = getattr(document, "title", None) if document is not None else None
        text = getattr(document, "text", None) if document is not None else None
        if not text:
            text = trafilatura.html2txt(html)
        return (title or None), (text or "").strip()
    if page.content_type.startswith("text/") or page.content_type in _TEXT or page.content_type.endswith(("+json", "+xml")):
        return None, _decode(page.body, page.charset).strip()
    raise FetchError(f"not a web page or text but {page.content_type}: fetch_url reads HTML and plain text only")


def _decode(body: bytes, charset: str | None) -> str:
    if charset:
        try:
            return body.decode(charset, errors="replace")
        except LookupError:
            pass

    best = from_bytes(body).best()
    return str(best) if best is not None else body.decode("utf-8", errors="replace")


class FetchUrl:
    """The ``fetch_url`` tool (plugin ``web``): args ``{"url": "https://…"}`` → the page's main text,
    headed by its final URL and title, cut to ``output_chars``. Limits: ``max_bytes`` of body and
    ``timeout_s`` for the whole fetch; the SSRF guard of ``net`` (with ``allow`` as its allow-list)
    for the URL and every redirect; ``verify``: https certificate checking (``net.fetch``). A
    refusal or a failure is an error outcome."""

    plugin = "web"
    spec = ToolSpec(
        name="fetch_url",
        description=("Read a web page: returns its main text (menus and boilerplate left out). "
                     "Only public http(s) pages; long pages are cut."),
        parameters={
            "type": "object",
            "properties": {"url": {"type": "string", "description": "the page's URL, http:// or https://"}},
            "required": ["url"],
        },
    )

    def __init__(self, *, max_bytes: int = 2_000_000, timeout_s: float = 10.0, allow: net.AllowList = net.AllowList(),
                 output_chars: int = 8000, verify: ssl.SSLContext | bool = True) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.allow = allow
        self.output_chars = output_chars
        self.verify = verify

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """See the class."""
        try:
            url = text_arg(args, "url", max_chars=4000)
            assert url is not None
            if "://" not in url:
                url = "https://" + url
            page = await net.fetch(url, max_bytes=self.max_bytes, timeout_s=self.timeout_s, allow=self.allow, verify=self.verify)
            title, text = await anyio.to_thread.run_sync(extract_text, page, abandon_on_cancel=True)
        except PluginError as exc:
            return ToolOutcome(str(exc), error=True)
        except Exception as exc:  # a parser's bug must not end the turn: the model hears it failed
            log.exception("fetch_url failed")
            return ToolOutcome(f"reading the page failed: {type(exc).__name__}", error=True)
        head = f"{page.url}\n{title}\n\n" if title else f"{page.url}\n\n"
        return ToolOutcome(cut(head + (text or "(the page has no text)"), self.output_chars))

    def notice(self, args: dict[str, Any]) -> str:
        url = args.get("url") if isinstance(args, dict) else None
        return _("📄 read {page}", page=short(page_label(str(url or "?")), 60))


def page_label(url: str) -> str:
    """``"https://www.example.org/page?x=1"`` → ``"example.org/page"``: a URL as a notice shows it."""
    try:
        u = httpx.URL(url.strip() if "://" in url else "https://" + url.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        return url
    host = u.host.removeprefix("www.")
    path = u.path.rstrip("/")
    return f"{host}{path}" if host else url
