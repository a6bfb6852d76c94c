"""The interface's message catalog: every user-visible string of the bot, in the member's language.

Mechanism: GNU gettext catalogs read with Babel. The English text is the message id (gettext's
convention: English needs no catalog, and a string missing from a catalog falls back to it);
``i18n/locales/<lang>.po`` holds one language (``ru.po``). Adding a language is adding one
``.po`` file (``make messages`` refreshes ``kith.pot`` and every ``.po`` from the source; translate
with any PO editor). Why gettext over Fluent: the format every translation tool and platform speaks
(Poedit, Weblate, Crowdin), plural rules from CLDR through Babel, and extraction straight from the
Python source, so a test can list every string that has no translation.

Use:
- ``_("Unknown command /{command}. Try /help.", command="x")``: the current language's text,
  ``str.format``-ed with the keywords (no keywords: returned as is, braces untouched);
- ``ngettext("{n} message", "{n} messages", n, n=n)``: plural forms by the language's rules;
- ``N_("…")`` marks a constant for extraction; translate it where it is used with ``_(CONST)``;
- ``with use("ru"): …`` sets the language for the code inside (a ContextVar: per task, so each
  chat's actor has its own); ``current()`` reads it;
- ``number``, ``money``, ``date``, ``datetime_`` format per locale (Babel, CLDR data).

Language codes are ISO 639-1 (``en``, ``ru``); ``normalize`` maps Telegram's ``language_code``
(IETF tags such as ``ru-RU``, ``pt-br``) to a language with a catalog, or None.
"""
from __future__ import annotations

import functools
import gettext as _gettext
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date as _date
from datetime import datetime
from pathlib import Path

__all__ = [
    "DEFAULT",
    "DOMAIN",
    "LOCALES_DIR",
    "N_",
    "_",
    "available",
    "current",
    "date",
    "datetime_",
    "in_language",
    "money",
    "ngettext",
    "normalize",
    "number",
    "pick",
    "translations",
    "use",
]

DEFAULT = "en"
LOCALES_DIR = Path(__file__).with_name("locales")
DOMAIN = "kith"

_current: ContextVar[str] = ContextVar("kith_language", default=DEFAULT)


@functools.cache
def available() -> tuple[str, ...]:
    """The interface languages: English, then every ``locales/<lang>.po``, sorted."""
    return (DEFAULT, *sorted(p.stem for p in LOCALES_DIR.glob("*.po") if p.stem != DEFAULT))


def normalize(code: str | None) -> str | None:
    """``"ru-RU"`` → ``"ru"``: the interface language for a Telegram ``language_code`` or a
    setting, or None when there is no catalog for it (or no code)."""
    if not code:
        return None
    lang = code.strip().replace("_", "-").split("-", 1)[0].lower()
    return lang if lang in available() else None


@functools.cache
def translations(lang: str) -> _gettext.NullTranslations:
    """The compiled catalog of ``lang`` (English: the identity). A ``.po`` is read once per process
    (Babel's reader, then compiled in memory): fuzzy and empty entries fall back to English."""
    path = LOCALES_DIR / f"{lang}.po"
    if lang == DEFAULT or not path.exists():
        return _gettext.NullTranslations()
    from babel.messages.mofile import write_mo  # deferred: babel.messages (~35 ms), only when a catalog is compiled
    from babel.messages.pofile import read_po  # deferred: babel.messages (~35 ms), only when a catalog is compiled

    with path.open("rb") as f:
        catalog = read_po(f, locale=lang, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return _gettext.GNUTranslations(buf)


def current() -> str:
    """The language of the code running now (``use``), default English."""
    return _current.get()


@contextmanager
def use(lang: str | None) -> Iterator[str]:
    """Speak ``lang`` (normalised; unknown → English) inside the block."""
    token = _current.set(normalize(lang) or DEFAULT)
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def _(message: str, /, **fmt: object) -> str:
    """``message`` in the current language, formatted with ``fmt`` (when given)."""
    text = translations(_current.get()).gettext(message)
    return text.format(**fmt) if fmt else text


def ngettext(singular: str, plural: str, n: int, /, **fmt: object) -> str:
    """The form of ``singular``/``plural`` for ``n`` in the current language, formatted with ``fmt``."""
    text = translations(_current.get()).ngettext(singular, plural, n)
    return text.format(**fmt) if fmt else text


def N_(message: str, /) -> str:
    """Mark ``message`` for the catalog without translating it (module constants)."""
    return message


def pick(text: str | Mapping[str, str] | None) -> str | None:
    """An operator's text from the config in the current language: a plain string as it is; of a
    ``{language: text}`` mapping, the current language's, else English's, else the first."""
    if text is None or isinstance(text, str):
        return text
    return text.get(_current.get()) or text.get(DEFAULT) or next(iter(text.values()), None)


def in_language(lang: str | None, message: str, /, **fmt: object) -> str:
    """``message`` in ``lang`` regardless of the current language (command menus per language)."""
    with use(lang):
        return _(message, **fmt)


# ---------------------------------------------------------------------- formatting (CLDR, via Babel)


def number(value: float | int, *, digits: int | None = None) -> str:
    """``1234.5`` → ``1,234.5`` (en) / ``1 234,5`` (ru). digits: fixed fraction digits."""
    from babel.numbers import format_decimal  # deferred: babel.numbers (~10 ms); the CLI imports i18n without formatting

    fmt = None if digits is None else "#,##0" + ("." + "0" * digits if digits else "")
    return format_decimal(value, format=fmt, locale=_current.get())


def money(amount: float, currency: str) -> str:
    """``0.04, "USD"`` → ``$0.04`` (en) / ``0,04 $`` (ru). currency: ISO 4217 code."""
    from babel.numbers import format_currency  # deferred: babel.numbers (~10 ms); the CLI imports i18n without formatting

    return format_currency(amount, currency, locale=_current.get())


def date(value: _date | datetime) -> str:
    """A calendar date, medium format: ``Nov 30, 2026`` (en) / ``30 нояб. 2026 г.`` (ru)."""
    from babel.dates import format_date  # deferred: babel.dates (~30 ms); the CLI imports i18n without formatting

    return format_date(value, format="medium", locale=_current.get())


def datetime_(value: datetime) -> str:
    """A date and time (minutes), short format: ``11/30/26, 2:05 PM`` (en) / ``30.11.2026, 14:05`` (ru)."""
    from babel.dates import format_datetime  # deferred: babel.dates (~30 ms); the CLI imports i18n without formatting

    return format_datetime(value, format="short", locale=_current.get())
