"""Language-aware terms for full-text search: which language a text is in, and its words reduced to
the form the index stores (lower-cased, stemmed or lemmatised in that language, or cut into
characters where a script has no spaces).

A message's language decides how its words are reduced, per script (``by_script``: the script with
the most letters decides, a Han or kana character counting ``CJK_WEIGHT`` letters):

- **Cyrillic**: Ukrainian when the text has a letter only Ukrainian uses (і ї є ґ), else Russian
  (ы э ъ ё are Russian only; a text with neither is taken as Russian, the larger audience). A rule,
  not a model: on short chat lines the statistical detectors confuse the two.
- **Latin**: English, German, Spanish or French, by ``py3langid`` (a naive Bayes model shipped in
  the package, restricted to those four) for texts of ``MIN_DETECT_LETTERS`` letters or more; a
  shorter text is English.
- **Han / kana**: Japanese when the text has kana, else Chinese. **Arabic letters**: Arabic.
- Words of the other script in the same text use that script's default (Latin → English, Cyrillic →
  Russian): "обновил Ubuntu" keeps "ubuntu" stemmed as English.

A query and a message in the same language meet on the stem across inflections ("видеокарта"
finds "видеокарту"). Detection is a rule for Cyrillic (the same words always get the same language)
but statistical for Latin script, so a Latin-script text detected as German, Spanish or French is
indexed (and queried) with its English stems as well: a message taken for Spanish still meets an
English query on its words ("zanzibar quokka telemetry" ↔ "quokka"). English text gets English stems
only — exactly what the English full-text index stored before.

Reduction: Snowball stemmers (``PyStemmer``) for English, Russian, German, Spanish and French;
Ukrainian has no Snowball stemmer, so its words are lemmatised by ``simplemma``. Russian ё is read
as е. Every text is read in NFKC (full-width Latin, half-width kana, Arabic presentation forms),
Arabic-Indic digits as 0-9, and a word keeps its combining marks (Python's ``\w`` does not match
them: a vowelled Arabic word, a Hindi or Thai word used to fall apart into letters). Other scripts
(Hangul, Devanagari, Greek …) are lower-cased only. Query stop words (``query_terms``): English uses
the retrieval's own list (``STOP_WORDS``); the other languages none (``stop_words``
says why). The index drops English stop words itself (Snowball's list, after stemming, as the
English full-text index did before); other languages' frequent words stay in the index, where BM25's
IDF weighs them down.

**Arabic** (``normalize_arabic``, then Snowball's Arabic stemmer): harakat, Quranic marks and
tatweel are removed; أ إ آ ٱ → ا, ى → ي, ة → ه (and Persian ی ک → ي ك); the definite article with
a conjunction or preposition written onto it (ال وال فال بال كال لل) is set aside when two letters or
more remain. Normalising first makes the spellings people do and do not write one input; setting
the article aside is needed because Snowball keeps "والكتاب" whole and, once ة is ه, stems
"السياره" and "سياره" apart (it reads ه after an article as a pronoun): with it, the vowelled,
plain, definite and indefinite forms of a word ("السَّيَّارَةُ", "السيارة", "سيارة", "بالسيارة")
are one term. Persian and Urdu, in the same letters, are read the same way (not measured).

**Chinese and Japanese** have no spaces: a sentence was one "word" (dropped past
``MAX_TOKEN_CHARS``), so a phrase inside it was never found. A run of Han/kana characters is now
indexed as its characters and character bigrams (``ngrams``), and a query is cut the same way, so
any few characters of a message meet it; a one-character query meets the unigram. Japanese gets the
same cut (character bigrams are the standard fallback without a morphological analyser), which also
lets a kanji-only query — read as Chinese — find a Japanese message. Thai, Lao, Khmer and Myanmar,
also written without spaces, are cut into letter bigrams the same way (a letter with its marks;
not measured).

Measured against a word segmenter, jieba-rs (``rjieba`` 0.2.2, ``cut_for_search``; it installs here
and loads its dictionary offline in 0.1 s; jieba 0.42.1 itself takes 1.2 s and writes a cache file),
with ``benchmarks.recall_scripts`` (recall@10 of 4-8 consecutive characters that occur in exactly
one message, ``Memory.recall``, 200 queries):

    recall@10 (BM25 alone), %                         before        n-grams      jieba-rs
    Chinese: 3,000 real zh_CN gettext strings          56.5 (39.5)   100 (100)    93.5 (94.5)
    Japanese: 3,000 real ja gettext strings            50.5 (18.0)   100 (99.5)   100 (99.5)
    Chinese: synthetic group chat, 600 messages        57.5 (7.5)    100 (100)    98.5 (94.5)

(``--catalogs zh_CN``: the translated strings of the machine's gettext catalogs — git, apt,
coreutils … —, real sentences, not chat.) Phrases cut at word boundaries (2-4 jieba words,
300 queries on another 3,000-string sample of the zh_CN catalogs) are found by both (n-grams 100, jieba 100 %): jieba's misses are phrases that
start or end inside a word, which it segments differently in the query and in the message. Speed:
``index_terms`` takes about 30 µs a message with either (against ~2 ms to embed it); n-grams store
2.7 times the terms (23.4 against 8.8 a message on zh_CN) and a full-text query reads more posting
lists (p50 6.2 against 5.5 ms on a loaded machine). N-grams: no dependency, no dictionary, the same
cut for Chinese and Japanese, and full recall.

Arabic on the same benchmark (``before`` → now; phrases of 2-4 words, as written / typed without
harakat and hamza): 3,000 real ar gettext strings 98.5 / 97.0 → 100 / 100 %; the synthetic chat
(a quarter of its messages vowelled) 93.0 / 75.5 → 100 / 100 %.
"""
from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable
from functools import cache, lru_cache

import Stemmer

__all__ = ["CJK", "CJK_WEIGHT", "CYRILLIC", "LANGUAGES", "LATIN", "MAX_QUERY_TERMS", "MAX_TOKEN_CHARS",
           "MIN_DETECT_LETTERS", "NAMES", "STOP_WORDS", "by_script", "detect", "detect_or_none", "held_terms",
           "index_terms", "ngrams", "normalize", "normalize_arabic", "query_terms", "query_words", "reduce",
           "split_words", "stop_words", "warm", "words", "would_load"]

LANGUAGES = ("en", "ru", "uk", "de", "es", "fr", "zh", "ja", "ar")
NAMES = {"en": "English", "ru": "Russian", "uk": "Ukrainian", "de": "German", "es": "Spanish", "fr": "French",
         "zh": "Chinese", "ja": "Japanese", "ar": "Arabic"}
LATIN = ("en", "de", "es", "fr")
CYRILLIC = ("ru", "uk")
CJK = ("zh", "ja")
MIN_DETECT_LETTERS = 20  # a Latin-script text shorter than this is English (detection is noise below it)
MAX_TOKEN_CHARS = 40  # longer runs (hashes, base64) are not words: dropped, as the index did before
CJK_WEIGHT = 2  # a Han or kana character counts as this many letters when scripts are compared
MAX_QUERY_TERMS = 256  # a query's terms after segmentation (a pasted page of Chinese is not a question)


def _mark_ranges() -> str:
    """A character-class body of every combining mark (Unicode category M*) of the BMP: Arabic
    harakat, Devanagari and Thai vowel signs, decomposed accents. Python's ``\\w`` does not match
    them, so without this a vowelled Arabic word falls apart into letters."""
    out, start, prev = [], -2, -2
    for cp in range(0x300, 0x10000):
        if unicodedata.category(chr(cp))[0] != "M":
            continue
        if cp != prev + 1:
            if start >= 0:
                out.append((start, prev))
            start = cp
        prev = cp
    out.append((start, prev))
    return "".join(f"\\u{a:04x}-\\u{b:04x}" if a != b else f"\\u{a:04x}" for a, b in out)


_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005\u3007\u303b\U00020000-\U0003134f"
_KANA = "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"
# scripts written without spaces between words, beside Chinese and Japanese: Thai, Lao, Khmer, Myanmar
_UNSPACED = "\u0e00-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f"
_MARKS = _mark_ranges()
# a word: a letter or digit, then letters, digits and combining marks; "_" splits, as the index's tokenizer did
_WORD = re.compile(rf"[^\W_](?:[^\W_]|[{_MARKS}])*")
# a word's pieces by script: a run of Han and kana, a run of another unspaced script, the rest
_PIECE = re.compile(rf"[{_HAN}{_KANA}]+|[{_UNSPACED}]+|[^{_HAN}{_KANA}{_UNSPACED}]+")
_CLUSTER = re.compile(rf"[^{_MARKS}][{_MARKS}]*")  # a letter with the marks on it (Thai vowel signs)
_CJK_CHAR = re.compile(rf"[{_HAN}{_KANA}]")
_KANA_CHAR = re.compile(rf"[{_KANA}]")
_UNSPACED_CHAR = re.compile(rf"[{_UNSPACED}]")
_CYR = re.compile(r"[\u0400-\u04ff]")
_LAT = re.compile(r"[A-Za-z\u00c0-\u024f]")
_ARABIC = re.compile(r"[\u0620-\u064a\u066e-\u06d3\u06d5\u06fa-\u06ff\u0750-\u077f]")  # letters, not marks or digits
_UK_ONLY = re.compile(r"[іїєґІЇЄҐ]")
_SNOWBALL = {"en": "english", "ru": "russian", "de": "german", "es": "spanish", "fr": "french", "ar": "arabic"}
_lock = threading.Lock()

# Arabic: harakat, Quranic marks and tatweel go; alef forms, alef maqsura and ta marbuta are unified
_AR_DROP = re.compile(r"[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_AR_UNIFY = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه", "ی": "ي", "ک": "ك"})
# the definite article with a conjunction or preposition written onto it (وال فال بال كال لل ...),
# when two letters or more remain: Snowball's Arabic stemmer leaves "والكتاب" whole
_AR_ARTICLE = re.compile(r"^(?:[وف]?(?:[بكل]?ال|لل))(?=..)")
_DIGITS = str.maketrans({**{chr(0x660 + i): str(i) for i in range(10)}, **{chr(0x6f0 + i): str(i) for i in range(10)}})


def normalize(text: str) -> str:
    """``text`` as both sides of the index read it: NFKC (full-width Latin and digits, half-width
    kana, Arabic presentation forms become the ordinary letters), Arabic-Indic digits as 0-9. ASCII
    text is returned as is."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text).translate(_DIGITS)


# English function words and question words: they carry no topic, and in a question they only add
# noise to BM25 ("what did", "how does"). Applied to the query only; the index keeps its own list.
STOP_WORDS = frozenset(
    ["a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "done", "down", "during", "each", "either", "else", "ever", "every", "few", "for", "from", "further", "get", "got", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "kind", "like", "me", "might", "more", "most", "much", "must", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "one", "only", "or", "other", "ought", "our", "ours", "ourselves", "out", "over", "own", "per", "quite", "rather", "s", "same", "shall", "she", "should", "since", "so", "some", "such", "t", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "though", "through", "thus", "to", "too", "type", "under", "until", "up", "upon", "us", "very", "was", "we", "were", "what", "whatever", "when", "whenever", "where", "whereas", "wherever", "whether", "which", "while", "who", "whoever", "whom", "whose", "why", "will", "with", "would", "yet", "you", "your", "yours", "yourself", "yourselves", "ll", "re", "ve", "d", "m", "don", "didn", "doesn", "isn", "wasn", "aren", "weren", "hasn", "haven", "hadn", "won", "wouldn", "couldn", "shouldn"]
)


def detect(text: str) -> str:
    """The language of ``text``: one of ``LANGUAGES`` ("en" when nothing tells)."""
    return detect_or_none(text) or "en"


@lru_cache(maxsize=256)  # a turn asks twice for its text: the answer's language, then recall's full-text query
def detect_or_none(text: str) -> str | None:
    """``detect``, but None when the text does not tell (a short Latin-script text, no letters).
    The script with the most letters decides (a Han or kana character counts ``CJK_WEIGHT``)."""
    lang = by_script(text)
    if lang != "latin":
        return lang
    lang, _ = _identifier().classify(text)
    return lang if lang in LATIN else None


def by_script(text: str) -> str | None:
    """The language of ``text`` as far as its letters tell by rule: "zh", "ja", "ar", "ru", "uk";
    "latin" for a Latin-script text of ``MIN_DETECT_LETTERS`` letters or more (``detect_or_none``
    asks the statistical model which language); None when nothing tells."""
    cyr = len(_CYR.findall(text))
    lat = len(_LAT.findall(text))
    if text.isascii():
        cjk = ar = 0
    else:
        cjk = CJK_WEIGHT * len(_CJK_CHAR.findall(text))
        ar = len(_ARABIC.findall(text))
    if cjk and cjk >= max(cyr, lat, ar):
        return "ja" if _KANA_CHAR.search(text) else "zh"
    if ar and ar >= max(cyr, lat):
        return "ar"
    if cyr > lat:
        return "uk" if _UK_ONLY.search(text) else "ru"
    if lat < MIN_DETECT_LETTERS:
        return None
    return "latin"


def would_load(text: str) -> bool:
    """Whether reducing ``text`` may first load a model (py3langid's, or simplemma's Ukrainian
    dictionary: ~1 s each, once per process): do that off the event loop."""
    if _identifier.cache_info().currsize == 0:
        return True
    return _reduce_uk.cache_info().currsize == 0 and _UK_ONLY.search(text) is not None


def warm() -> None:
    """Load what the first message would otherwise wait for (py3langid's model, ~1 s, and the
    English stemmer), so that a bot's first answer is as fast as the others. Blocking: call it in a
    worker thread."""
    _identifier()
    reduce(["warming"], "en")


@lru_cache(maxsize=1)
def _identifier():
    # deferred: py3langid and its model (~140 ms), on the first detection
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE)
    ident.set_languages(list(LATIN))
    return ident


@cache
def _stemmer(lang: str):
    return Stemmer.Stemmer(_SNOWBALL[lang])


@lru_cache(maxsize=200_000)
def _reduce_uk(word: str) -> str:
    import simplemma  # deferred: simplemma (~50 ms), on the first lemmatisation

    return simplemma.lemmatize(word, lang="uk").lower()


def normalize_arabic(word: str) -> str:
    """An Arabic word without harakat and tatweel, with أ إ آ ٱ → ا, ى → ي, ة → ه (and Persian ی ک
    → ي ك), and without a definite article (ال, with و ف ب ك ل before it; لل) when two letters or
    more remain: the spellings a writer may or may not use become one."""
    return _AR_ARTICLE.sub("", _AR_DROP.sub("", word).translate(_AR_UNIFY))


def _script_lang(word: str, lang: str) -> str | None:
    """The language a word is reduced in: ``lang`` if the word is in its script, else that script's
    default; "cjk" for Han and kana, "unspaced" for Thai, Lao, Khmer and Myanmar (both cut into
    characters, ``ngrams``); None for words in no such script (digits, other alphabets)."""
    if word.isascii():  # most words: no regex needed
        return None if word.isdigit() else (lang if lang in LATIN else "en")
    if _CJK_CHAR.match(word):
        return "cjk"
    if _CYR.search(word):
        return lang if lang in CYRILLIC else "ru"
    if _LAT.search(word):
        return lang if lang in LATIN else "en"
    if _ARABIC.search(word):
        return "ar"
    if _UNSPACED_CHAR.match(word):
        return "unspaced"
    return None


def reduce(words: Iterable[str], lang: str) -> list[str]:
    """Lower-cased words of a text in ``lang``, each stemmed (lemmatised for Ukrainian) in its script's
    language; order kept, nothing dropped. Arabic words are normalised (``normalize_arabic``) before
    Snowball's Arabic stemmer; Han, kana and the other unspaced scripts are only lower-cased here
    (``_terms`` cuts them into characters)."""
    return _reduce(words, lang)[0]


def _reduce(words: Iterable[str], lang: str) -> tuple[list[str], bool]:
    """``reduce``, and whether a word is of a script cut into characters (Han, kana, Thai …)."""
    by_lang: dict[str | None, list[int]] = {}
    out = []
    for i, w in enumerate(words):
        w = w.lower()
        if "ё" in w:
            w = w.replace("ё", "е")
        out.append(w)
        by_lang.setdefault(_script_lang(w, lang), []).append(i)
    for wlang, idx in by_lang.items():
        if wlang is None or wlang == "cjk" or wlang == "unspaced":
            continue
        if wlang == "uk":
            for i in idx:
                out[i] = _reduce_uk(out[i])
            continue
        if wlang == "ar":
            for i in idx:
                out[i] = normalize_arabic(out[i])
        with _lock:  # a PyStemmer object is not thread-safe (the index writes from worker threads)
            stems = _stemmer(wlang).stemWords([out[i] for i in idx])
        for i, s in zip(idx, stems):
            out[i] = s
    return out, "cjk" in by_lang or "unspaced" in by_lang


def split_words(text: str) -> list[str]:
    """Words of ``text``: runs of letters, digits and combining marks (any script), each cut where
    it changes between Han/kana, another unspaced script (Thai, Lao, Khmer, Myanmar) and the rest
    ("iPhone手机" → "iPhone", "手机"); no length limit."""
    out = []
    for m in _WORD.finditer(normalize(text)):
        w = m.group(0)
        if w.isascii():
            out.append(w)
        else:
            out.extend(p.group(0) for p in _PIECE.finditer(w))
    return out


def words(text: str) -> list[str]:
    """``split_words(text)`` without the runs longer than ``MAX_TOKEN_CHARS`` (hashes, base64) — a
    run of an unspaced script is a sentence, not a word, and is kept."""
    return [w for w in split_words(text) if len(w) <= MAX_TOKEN_CHARS or _CJK_CHAR.match(w) or _UNSPACED_CHAR.match(w)]


def ngrams(run: str) -> list[str]:
    """The characters of a run of Han/kana (or Thai, …; a character with its combining marks) and
    its character bigrams: "北京烤鸭" → 北 京 烤 鸭 北京 京烤 烤鸭. Bigrams match a phrase; characters
    match a one-character query."""
    chars = _CLUSTER.findall(run) if not _CJK_CHAR.match(run) else list(run)
    if len(chars) < 2:
        return chars
    return chars + [chars[i] + chars[i + 1] for i in range(len(chars) - 1)]


def _terms(ws: list[str], lang: str) -> list[str]:
    """``ws`` reduced in ``lang``; runs of Han/kana and other unspaced scripts cut into ``ngrams``;
    for German, Spanish and French (statistically detected) each word's English reduction follows
    its own when it differs. (Keeping the surface forms too was measured: exact-phrase recall@10 +2.6
    points, inflected-word −9.3 on the Russian benchmark.)"""
    reduced, unspaced = _reduce(ws, lang)
    if unspaced:
        cut: list[str] = []
        for w in reduced:
            if _CJK_CHAR.match(w) or _UNSPACED_CHAR.match(w):
                cut.extend(ngrams(w))
            else:
                cut.append(w)
        return cut
    if lang not in LATIN or lang == "en":
        return reduced
    out = []
    for own, en in zip(reduced, reduce(ws, "en")):
        out.append(own)
        if en != own:
            out.append(en)
    return out


def index_terms(text: str, lang: str | None = None) -> str:
    """What the full-text index reads for ``text``: its words reduced (``_terms``), space-separated
    (the index itself drops English stop words, as before). ``lang`` None: ``detect(text)``."""
    lang = lang or detect(text)
    return " ".join(_terms([w.lower().replace("ё", "е") for w in words(text)], lang))


def held_terms(content: str, text: str) -> frozenset[str]:
    """The distinct terms of a row whose ``content`` (sender, day, text) has ``text``, for the
    coverage of a query's terms (``retrieval.Fusion.coverage``), without the statistical detector
    (it costs more than the reduction): ``content`` as ``index_terms`` reduces it in the language its
    script tells by rule (``by_script``), and Latin script in English — the stems the index holds for
    every Latin-script text, whichever language ``detect`` named (``_terms``)."""
    lang = by_script(text)
    return frozenset(index_terms(content, "en" if lang in (None, "latin") else lang).split())


def stop_words(lang: str) -> frozenset[str]:
    """Query stop words of ``lang``: English's (Snowball's function words plus question words,
    ``STOP_WORDS``); none for the other languages, whose BM25 weights frequent words down
    by itself. The lists at hand for them mix in content words (the ``stop-words`` package's Russian
    list holds время, жизнь, человек, день, год…), and dropping those cost exact-phrase recall on
    Russian dialogue (dev: 92.0 → 96.7 % at 10 with them kept, inflected words unchanged)."""
    if lang == "en":
        return STOP_WORDS
    return frozenset()


def query_words(text: str, limit: int = 64) -> list[str]:
    """The distinct lower-cased words of a query (``split_words``), at most ``limit``: what
    ``query_terms`` takes. Vowelled Arabic stays one word ("كَتَبَ"), as the index reads it."""
    seen: dict[str, None] = {}
    for w in split_words(text):
        seen.setdefault(w.lower(), None)
        if len(seen) >= limit:
            break
    return list(seen)


def query_terms(terms: Iterable[str], lang: str, *, drop_stop_words: bool = True) -> list[str]:
    """A query's distinct terms reduced as ``index_terms`` reduces a message's, stop words of their
    language left out when that leaves something; order kept, at most ``MAX_QUERY_TERMS``."""
    terms = [t.lower().replace("ё", "е") for t in terms]
    if drop_stop_words:
        kept = [t for t in terms if t not in stop_words(_script_lang(t, lang) or lang)]
        terms = kept or terms
    seen: dict[str, None] = {}
    for t in _terms(terms, lang):
        seen.setdefault(t, None)
        if len(seen) >= MAX_QUERY_TERMS:
            break
    return list(seen)
