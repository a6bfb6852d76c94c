"""Recall@10 of single-message phrases per script: Chinese, Arabic, Russian and English chats.

What it measures: a member remembers a few words of one message and asks for them; is that message
in the top 10 of ``Memory.recall`` — the path the bot and ``kith memory search`` use (hybrid search
of ``memory.vectors`` through the stages of ``memory.retrieval``, the real embedding model, full text
reduced by ``providers.language``)? Rows: the full method and BM25 alone (``mode="fts"``) per script.

**Corpora** (one chat each, imported with ``import_transcript`` into one fresh data dir):

- *English*: the first ``ENGLISH_FILES`` slices of ``../shared/data/ubuntu-irc`` (real #ubuntu IRC;
  quick: one).
- *Russian*: the three RusDraCor plays of ``../shared/data/ru-dialogue`` (real 19th-century dialogue;
  quick: one). There is no Ukrainian text here: measure a Ukrainian export with ``--file``.
- *Chinese* and *Arabic*: **synthetic** — there is no real Chinese or Arabic chat data here.
  ``synthetic_chat`` writes ``SYNTHETIC_MESSAGES`` group-chat messages per language from the
  templates and word lists of this module (``ZH`` and ``AR``: plans, errands, lost things, places,
  times; 16 sentence templates per language, 8-20 fillers per slot), seeded; one message in
  ``SHORT_SHARE`` is a short chat reply ("好的", "收到", "شكرا", "تمام" …), as in a real group. In
  Arabic, one message in four writes its names, places and things with harakat (``فَاطِمَة``) and one
  in four drops the hamza of alef (أ → ا), as people type. Template text repeats across messages by
  construction, so only phrases that cross the filled slots are unique: harder than natural text in
  that respect, easier in the small vocabulary. Real data will give other numbers: run ``--file``.

**Queries** (deterministic, ``random.Random(SEED)``; the procedure, not the data, decides):

- messages in a seeded order; a message is *unspaced* when it has ``MIN_CJK`` Han/kana characters or
  more, else *spaced*;
- spaced: its tokens are its whitespace-separated pieces with punctuation and symbols stripped from
  their ends; the phrase is ``2-4`` consecutive tokens (length and start drawn), the query is them
  joined by spaces;
- unspaced: its clauses are its runs of Han/kana characters; the phrase is ``4-8`` consecutive
  characters of one clause (about 2-4 Chinese words; length, clause and start drawn) — cut on
  characters, so it does not depend on any word segmenter;
- the phrase must occur in exactly one message of the chat, compared folded (NFKC, case-folded,
  combining marks removed, Arabic أ إ آ ٱ ى ة as ا ي ه; spaced: as a token sequence, unspaced: as a
  substring), and a spaced phrase must be told apart by its words too: its words less English
  function words (``memory.retrieval.STOP_WORDS``, which a query drops) are all held by that one
  message only. A bag-of-words search cannot tell "files and" in one message from "files" and "and"
  in fifty; a person looking for a message types the words that set it apart. Rows marked *any
  phrase* drop that rule, for comparison (English #ubuntu: 90.0 %, its misses are phrases such as
  "as to what", "both of your", "think any");
- up to 3 starts are tried per message, else the message is skipped; ``PER_SCRIPT`` queries per
  script (quick: ``QUICK_PER_SCRIPT``), spread evenly over its chats;
- Arabic is asked twice: as written, and *typed* — harakat and tatweel removed, أ إ آ written ا.

A hit: the target message among the top 10. ``--file PATH`` (any transcript ``import_transcript``
reads: JSONL or a Telegram Desktop export) measures that file alone the same way, one row per
language found (``providers.language.detect`` of its messages, the majority per chat).
``--catalogs LOCALE`` does the same with real text in that language: the translated strings of the
machine's gettext catalogs (``catalog_chat``; zh_CN, ja, ar … under /usr/share/locale).
``--segmenter jieba`` (development aid; needs ``rjieba``, not a dependency) swaps Chinese n-grams
for jieba-rs word segmentation, as measured in ``providers.language``'s docstring.

Measured (openvino, 2026-12-06; before = the code before Arabic/CJK support and the coverage factor):

    recall@10 (BM25 alone), %                     before        now
    Chinese, synthetic chat                       57.5 (7.5)    100 (100)
    Arabic, synthetic chat, as written            93.0 (100)    100 (100)
    Arabic, typed without harakat/hamza           75.5 (79.0)   100 (100)
    Russian, RusDraCor                            95.5 (99.0)   99.0 (99.0)
    English, #ubuntu                              97.5 (99.5)   99.5 (99.5)
    any phrase: Russian · English                 92.5 · 88.0   98.0 · 90.0
    --catalogs zh_CN · ja · ar (real text)        56.5 · 50.5 · 98.5    100 · 100 · 100
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, progress

SEED = 20261201
K = 10
PER_SCRIPT, QUICK_PER_SCRIPT = 200, 50
ENGLISH_FILES = 3
SYNTHETIC_MESSAGES = 600
SHORT_SHARE = 0.2
WORDS = (2, 4)  # phrase length in tokens, spaced scripts
CHARS = (4, 8)  # phrase length in characters, Han/kana
MIN_CJK = 4
TARGET = 95.0
ANY = ", any phrase"  # the label suffix of the rows without the content-word rule

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005\u3040-\u309f\u30a0-\u30ff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORDS = re.compile(r"[^\W_]+")
_AR_FOLD = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه"})
_AR_MARKS = re.compile(r"[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")

# ---------------------------------------------------------------------- synthetic corpora

# Each template's {slots} are filled from the lists of the same name. Chinese: everyday group chat.
ZH = {
    "templates": [
        "{name}，{time}在{place}{activity}，你来吗？",
        "我的{thing}{state}，谁有空帮我看看？",
        "{time}我要去{place}，顺便{activity}。",
        "别忘了{time}把{thing}带到{place}。",
        "{name}说{place}附近新开了一家{shop}，{opinion}。",
        "{thing}我放在{place}了，{time}去拿。",
        "{time}的{event}改到{place}了，大家注意一下。",
        "听说{name}{time}要去{place}{activity}，真的假的？",
        "{place}的{thing}{state}，我已经跟{name}说了。",
        "我们{time}一起去{place}{activity}吧，{reason}。",
        "{name}的{thing}多少钱买的？看起来{opinion}。",
        "今天{weather}，{time}还去不去{place}？",
        "刚从{place}回来，{activity}累死了。",
        "谁知道{place}几点关门？我想{time}过去{activity}。",
        "{name}把{thing}借给我了，{time}还给他。",
        "提醒一下：{time}之前要交{document}，{name}负责收。",
    ],
    "name": ["小王", "小李", "老张", "阿明", "王老师", "李经理", "陈姐", "刘师傅", "小美", "老赵", "周总", "孙阿姨",
             "大伟", "晓雯", "志强", "胖子"],
    "time": ["今天下午", "明天早上", "昨天晚上", "周末", "下周一", "上个月", "这周五", "后天中午", "月底", "国庆节前",
             "春节以后", "刚才", "前天夜里", "下个星期三", "八点半", "中午十二点"],
    "place": ["北京", "上海南站", "公司楼下", "图书馆", "咖啡店", "地铁站", "医院门口", "体育馆", "超市", "机场",
              "火锅店", "会议室", "学校食堂", "小区门口", "西湖边", "电影院", "银行", "健身房", "菜市场", "停车场"],
    "thing": ["笔记本电脑", "充电器", "护照", "钥匙", "雨伞", "发票", "合同", "快递", "耳机", "身份证", "手机壳",
              "打印机", "显示器", "自行车", "咖啡机", "钱包", "行李箱", "保温杯", "路由器", "投影仪"],
    "activity": ["开会", "吃饭", "打羽毛球", "看电影", "爬山", "加班", "买菜", "搬家", "修电脑", "面试", "体检",
                 "跑步", "装修", "写报告", "复习考试", "拍照", "钓鱼", "逛街"],
    "state": ["坏了", "丢了", "太贵了", "很好用", "有点慢", "还没到", "忘带了", "修好了", "被借走了", "放在桌上了",
              "没电了", "屏幕裂了"],
    "shop": ["川菜馆", "奶茶店", "书店", "面包房", "宠物医院", "理发店", "烧烤店", "水果店", "拉面馆", "花店"],
    "opinion": ["味道还不错", "价格挺实惠的", "人特别多", "服务一般", "环境很安静", "排队要一个小时", "质量不太好",
                "老板很热情"],
    "event": ["部门聚餐", "项目评审", "生日派对", "家长会", "培训课", "篮球比赛", "年终总结", "新人见面会"],
    "reason": ["好久没见了", "天气不错", "正好有优惠", "顺便商量一下方案", "反正周末没事", "孩子们也想去"],
    "weather": ["下大雨", "特别热", "刮大风", "有雾霾", "下雪了", "阴天", "降温了", "出太阳了"],
    "document": ["周报", "报销单", "实习证明", "请假条", "体检报告", "设计稿", "预算表", "合同复印件"],
    "short": ["好的", "收到", "哈哈哈哈", "谢谢！", "可以", "没问题", "嗯嗯", "明白了", "好啊", "我也去", "在吗？",
              "稍等", "辛苦了", "晚安", "早上好", "加油！", "真的吗", "我看看", "太好了", "行"],
}

# Arabic: the same kind of chat in Modern Standard Arabic. Names, places and things carry harakat
# here; a message keeps them with probability VOWELLED (else they are removed).
AR = {
    "templates": [
        "يا {name}، هل ستأتي معنا إلى {place} {time}؟",
        "{thing} {state}، هل يمكن لأحد أن يساعدني؟",
        "سأذهب إلى {place} {time} لكي {activity}.",
        "لا تنس أن تحضر {thing} إلى {place} {time}.",
        "قال {name} إن {place} {opinion}.",
        "تركت {thing} في {place}، سآخذه {time}.",
        "تم تغيير موعد {event} إلى {time} في {place}.",
        "سمعت أن {name} سيسافر {time}، هل هذا صحيح؟",
        "اتفقنا أن {activity} في {place} {time}.",
        "كم دفع {name} ثمن {thing}؟ يبدو أنه {opinion2}.",
        "الطقس {weather} اليوم، هل ما زلنا ذاهبين إلى {place}؟",
        "رجعت للتو من {place}، كان يوما متعبا بسبب {reason}.",
        "متى يغلق {place}؟ أريد أن أمر عليه {time}.",
        "أعارني {name} {thing} وسأعيده له {time}.",
        "تذكير: يجب تسليم {document} قبل {time}، و{name} مسؤول عن جمعها.",
        "أين وضعت {thing}؟ بحثت عنه في {place} ولم أجده.",
    ],
    "name": ["أَحْمَد", "مُحَمَّد", "فَاطِمَة", "عَلِيّ", "سَارَة", "خَالِد", "لَيْلَى", "يُوسُف", "مَرْيَم", "عُمَر",
             "نُور", "حَسَن", "هُدَى", "كَرِيم", "سَلْمَى", "إِبْرَاهِيم"],
    "time": ["اليوم بعد الظهر", "غدا صباحا", "مساء أمس", "في نهاية الأسبوع", "يوم الاثنين القادم", "الشهر الماضي",
             "يوم الجمعة", "بعد غد", "في آخر الشهر", "قبل العيد", "الليلة", "الساعة الثامنة والنصف", "بعد صلاة العصر",
             "الأسبوع القادم"],
    "place": ["الْمَكْتَب", "الْمَطَار", "الْمُسْتَشْفَى", "الْجَامِعَة", "السُّوق", "الْمَقْهَى", "الْمَكْتَبَة",
              "مَحَطَّة الْقِطَار", "النَّادِي الرِّيَاضِيّ", "الْمَطْعَم الْجَدِيد", "الْبَنْك", "الْحَدِيقَة",
              "قَاعَة الِاجْتِمَاعَات", "بَيْت جَدَّتِي", "الصَّيْدَلِيَّة", "السِّينِمَا", "الْمَلْعَب", "الشَّاطِئ"],
    "thing": ["الْحَاسُوب الْمَحْمُول", "الشَّاحِن", "جَوَاز السَّفَر", "الْمَفَاتِيح", "الْمِظَلَّة", "الْفَاتُورَة",
              "الْعَقْد", "الطَّرْد", "السَّمَّاعَات", "الْبِطَاقَة الشَّخْصِيَّة", "الطَّابِعَة", "الدَّرَّاجَة",
              "الْمِحْفَظَة", "الْحَقِيبَة", "الْكَامِيرَا", "النَّظَّارَة"],
    "activity": ["نتناول الغداء", "نلعب كرة القدم", "نشاهد فيلما", "نراجع الدروس", "نشتري الخضار", "نصلح السيارة",
                 "نحضر الاجتماع", "نمارس الرياضة", "ندرس للامتحان", "نزور الأصدقاء", "نشرب القهوة", "نلتقط الصور"],
    "state": ["تعطل", "ضاع مني", "غالي جدا", "لم يصل بعد", "نسيته في البيت", "تم إصلاحه", "مكسور", "بطيء جدا"],
    "opinion": ["مزدحم جدا", "هادئ ومريح", "أسعاره معقولة", "مغلق للصيانة", "بعيد عن البيت", "أفضل من قبل"],
    "opinion2": ["غالي", "رخيص", "جديد تماما", "مستعمل", "جيد جدا"],
    "event": ["الاجتماع الأسبوعي", "حفلة عيد الميلاد", "مباراة كرة السلة", "العشاء الجماعي", "الدورة التدريبية",
              "مقابلة العمل", "اجتماع أولياء الأمور", "رحلة المدرسة"],
    "reason": ["الزحمة", "المطر", "الحر الشديد", "طول الانتظار", "كثرة الناس", "تأخر الحافلة"],
    "weather": ["ممطر", "حار جدا", "عاصف", "غائم", "بارد", "مشمس"],
    "document": ["التقرير الأسبوعي", "طلب الإجازة", "الفواتير", "شهادة التدريب", "الميزانية", "التصميم النهائي"],
    "short": ["شكرا", "تمام", "حاضر", "إن شاء الله", "ههههه", "أكيد", "لا مشكلة", "صباح الخير", "مساء النور",
              "ماشي", "فهمت", "الحمد لله", "ممتاز", "طيب", "موافق", "يعطيك العافية"],
}
VOWELLED = 0.25
HAMZA_DROPPED = 0.25
USERS = {"zh": ["王磊", "李娜", "张伟", "刘洋", "陈静", "杨帆", "赵敏", "黄丽"],
         "ar": ["أحمد", "سارة", "خالد", "ليلى", "يوسف", "مريم", "عمر", "نور"]}
CHATS = {"zh": -1009100000001, "ar": -1009100000002}


def strip_harakat(text: str) -> str:
    """Harakat, Quranic marks and tatweel removed."""
    return _AR_MARKS.sub("", text)


def typed(text: str) -> str:
    """Arabic as people type a query: no harakat nor tatweel, أ إ آ written ا."""
    return strip_harakat(text).translate(str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا"}))


def synthetic_chat(lang: str, n: int = SYNTHETIC_MESSAGES, seed: int = SEED) -> list[dict]:
    """``n`` transcript lines of a synthetic group chat in ``lang`` ("zh" or "ar"), seeded (see the
    module docstring)."""
    spec = ZH if lang == "zh" else AR
    rng = random.Random(f"{seed}:{lang}")
    t0 = datetime(2025, 3, 1, 9, tzinfo=UTC)
    lines = []
    for i in range(n):
        if rng.random() < SHORT_SHARE:
            text = rng.choice(spec["short"])
        else:
            template = rng.choice(spec["templates"])
            slots = {k: rng.choice(v) for k, v in spec.items() if k not in ("templates", "short") and "{" + k + "}" in template}
            text = template.format(**slots)
            if lang == "ar":
                if rng.random() >= VOWELLED:
                    text = strip_harakat(text)
                if rng.random() < HAMZA_DROPPED:
                    text = text.translate(str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا"}))
        lines.append({"chat_id": CHATS[lang], "chat_title": f"synthetic {lang} chat", "message_id": i + 1,
                      "date": (t0 + timedelta(minutes=7 * i)).isoformat().replace("+00:00", "Z"),
                      "user": rng.choice(USERS[lang]), "text": text})
    return lines


_DIRECTIVE = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[hlLqjzt]*[a-zA-Z%]|%\d+\$[a-z]|\{\w*\}|\$\{\w+\}|<[^>]+>|[_&](?=\w)")


def catalog_chat(locale: str, chat_id: int, n: int = 3000, root: Path = Path("/usr/share/locale")) -> list[dict]:
    """Real text in any language a Debian machine has translations for: the translated strings of
    the gettext catalogs ``<root>/<locale>/LC_MESSAGES/*.mo`` (git, apt, coreutils, glib… written
    by people; the ``iso_*`` name lists left out), printf/format directives, markup and mnemonic
    marks removed, whitespace made one space, distinct, at least 8 characters; ``n`` of them in a
    seeded order, one message each (12 senders, a minute apart). Not chat, but real sentences."""
    import gettext

    texts: dict[str, None] = {}
    for mo in sorted((root / locale / "LC_MESSAGES").glob("*.mo")):
        if mo.name.startswith("iso_"):
            continue
        try:
            with mo.open("rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        for key, value in catalog.items():
            if key and isinstance(value, str):
                text = " ".join(_DIRECTIVE.sub(" ", value).split())
                if len(text) >= 8:
                    texts.setdefault(text, None)
    order = list(texts)
    rng = random.Random(f"{SEED}:{locale}")
    rng.shuffle(order)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    return [{"chat_id": chat_id, "chat_title": f"{locale} catalogs", "message_id": i + 1,
             "date": (t0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"), "user": f"u{rng.randrange(12)}",
             "text": t} for i, t in enumerate(order[:n])]


# ---------------------------------------------------------------------- queries


def fold(text: str) -> str:
    """The form phrases are compared in: NFKC, case-folded, combining marks removed (harakat,
    accents), Arabic أ إ آ ٱ ى ة as ا ي ه."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.category(c).startswith("M"))
    return unicodedata.normalize("NFC", text).translate(_AR_FOLD).replace("\u0640", "")


def _edge(c: str) -> bool:
    return unicodedata.category(c)[0] in "PSZ"


def tokens(text: str) -> list[str]:
    """Whitespace-separated pieces with punctuation and symbols stripped from their ends."""
    out = []
    for piece in text.split():
        a, b = 0, len(piece)
        while a < b and _edge(piece[a]):
            a += 1
        while b > a and _edge(piece[b - 1]):
            b -= 1
        if a < b:
            out.append(piece[a:b])
    return out


def unspaced(text: str) -> bool:
    return sum(len(r) for r in _CJK_RUN.findall(text)) >= MIN_CJK


def content_words(text: str) -> set[str]:
    """The folded words of ``text`` (runs of letters and digits) less English function words
    (``memory.retrieval.STOP_WORDS``, which the search leaves out of a query)."""
    from providers.language import STOP_WORDS

    return {w for w in _WORDS.findall(fold(text)) if w not in STOP_WORDS}


def make_queries(chats: dict[int, list[tuple[int, str]]], n: int, seed: int = SEED, *,
                 distinct: bool = True) -> list[tuple[int, int, str]]:
    """``[(chat_id, message_id, query)]``: about ``n`` phrases, each in exactly one message of its
    chat, spread evenly over ``chats`` (``{chat_id: [(message_id, text)]}``), by the procedure of the
    module docstring (``distinct``: spaced phrases must also be told apart by their words)."""
    rng = random.Random(seed)
    out: list[tuple[int, int, str]] = []
    ids = sorted(chats)
    for ci, chat_id in enumerate(ids):
        want = n // len(ids) + (1 if ci < n % len(ids) else 0)
        msgs = chats[chat_id]
        folded_tokens = [" " + " ".join(fold(t) for t in tokens(text)) + " " for _, text in msgs]
        folded_text = [fold(text) for _, text in msgs]
        word_sets = [set(_WORDS.findall(f)) for f in folded_text]
        order = list(range(len(msgs)))
        rng.shuffle(order)
        got = 0
        for i in order:
            if got >= want:
                break
            mid, text = msgs[i]
            for _attempt in range(3):
                if unspaced(text):
                    clauses = [r for r in _CJK_RUN.findall(text) if len(r) >= CHARS[0]]
                    if not clauses:
                        break
                    clause = rng.choice(clauses)
                    size = min(rng.randint(*CHARS), len(clause))
                    start = rng.randrange(0, len(clause) - size + 1)
                    phrase = clause[start:start + size]
                    needle = fold(phrase)
                    count = sum(needle in f for f in folded_text)
                else:
                    toks = tokens(text)
                    size = rng.randint(*WORDS)
                    if len(toks) < size:
                        break
                    start = rng.randrange(0, len(toks) - size + 1)
                    phrase = " ".join(toks[start:start + size])
                    needle = " " + " ".join(fold(t) for t in toks[start:start + size]) + " "
                    count = sum(needle in f for f in folded_tokens)
                    if distinct and count == 1:
                        held = content_words(phrase)
                        count = sum(held <= ws for ws in word_sets) if held else 0
                if count == 1:
                    out.append((chat_id, mid, phrase))
                    got += 1
                    break
    return out


# ---------------------------------------------------------------------- the run


def _read(path: Path) -> dict[int, list[tuple[int, str]]]:
    """``{chat_id: [(message_id, text)]}`` of the messages a transcript gives memory (members'
    messages with text), read as ``import_transcript`` reads them."""
    from memory.transcripts import read_transcript
    from memory.types import ROLE_USER, StoredMessage

    chats: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for m in read_transcript(path):
        if isinstance(m, StoredMessage) and m.role == ROLE_USER and m.text.strip():
            chats[m.chat_id].append((m.message_id, m.text))
    return dict(chats)


def _chat_language(msgs: list[tuple[int, str]]) -> str:
    from providers.language import detect_or_none

    votes = Counter(lang for _, text in msgs if (lang := detect_or_none(text)))
    return votes.most_common(1)[0][0] if votes else "en"


def _write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return path


def datasets(tmp: Path, quick: bool) -> list[tuple[str, list[Path]]]:
    """``[(row label, transcript files)]`` of the default run."""
    data = common.REPO_ROOT.parent / "shared" / "data"
    english = sorted((data / "ubuntu-irc").glob("*.jsonl"))[: 1 if quick else ENGLISH_FILES]
    russian = sorted((data / "ru-dialogue").glob("*.jsonl"))[: 1 if quick else None]
    return [
        ("Chinese (synthetic)", [_write(tmp / "zh.jsonl", synthetic_chat("zh"))]),
        ("Arabic (synthetic)", [_write(tmp / "ar.jsonl", synthetic_chat("ar"))]),
        ("Russian (RusDraCor plays)", russian),
        ("English (#ubuntu IRC)", english),
    ]


def segmenter(name: str) -> None:
    """Development aid: ``"jieba"`` cuts runs of Han characters with jieba-rs (``cut_for_search``)
    instead of character n-grams, on both sides (kana runs keep n-grams)."""
    if name == "ngram":
        return
    import rjieba

    from memory import language

    plain = language.ngrams
    kana = re.compile(r"[\u3040-\u309f\u30a0-\u30ff]")

    def cut(run: str) -> list[str]:
        if kana.search(run) or not language._CJK_CHAR.match(run):
            return plain(run)
        return [w for w in rjieba.cut_for_search(run) if w.strip()]

    language.ngrams = cut


def run(quick: bool, files: list[Path] | None = None, segmenter_name: str = "ngram") -> dict:
    import anyio

    segmenter(segmenter_name)
    n = QUICK_PER_SCRIPT if quick else PER_SCRIPT
    model, _ = common.load_model_timed(*common.bench_backends()[0])
    with tempfile.TemporaryDirectory(prefix="kith-bench-scripts-") as tmp:
        sets = datasets(Path(tmp), quick) if files is None else [(None, [Path(f)]) for f in files]
        rows = query_sets(sets, n)
        all_files = [p for _, paths in sets for p in paths]
        progress(f"recall_scripts: {', '.join(f'{label}: {len(qs)}' for label, qs in rows)} queries; importing")
        results, timing = anyio.run(_bench, Path(tmp), model, all_files, rows, backend="asyncio")
    metrics = []
    for label, _ in rows:
        full, fts = results[label]
        target = None if label.endswith(ANY) else (">=", TARGET)  # any phrase: for comparison, see the docstring
        metrics.append(metric(f"{label}: recall@{K}", full, "%", target=target))
        metrics.append(metric(f"{label}: BM25 only recall@{K}", fts, "%"))
    metrics.append(metric("import (embedding included)", timing["import_s"], "s"))
    return {
        "description": f"recall@{K} of phrases that occur in exactly one message, per script (Memory.recall, hybrid)",
        "params": {"queries": sum(len(q) for _, q in rows), "per_script": n, "seed": SEED,
                   "segmenter": segmenter_name, "embedding": f"{model.backend} {model.precision}"},
        "metrics": metrics,
        "notes": ["spaced scripts: 2-4 consecutive words; Chinese: 4-8 consecutive characters; "
                  "Chinese and Arabic chats are synthetic (templates of this module), English and Russian real"],
    }


def query_sets(sets: list[tuple[str | None, list[Path]]], n: int) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """``[(row label, queries)]`` for ``datasets`` (a None label: one row per language found): the
    phrases told apart by their words, then (where they differ) any phrase unique as a sequence,
    and for Arabic the same phrases typed without harakat and hamza."""
    from providers.language import NAMES

    groups: list[tuple[str, dict[int, list[tuple[int, str]]]]] = []
    for label, paths in sets:
        chats: dict[int, list[tuple[int, str]]] = {}
        for p in paths:
            chats.update(_read(p))
        if label is not None:
            groups.append((label, chats))
            continue
        by_lang: dict[str, dict[int, list[tuple[int, str]]]] = defaultdict(dict)  # --file: one row per language
        for cid, msgs in chats.items():
            by_lang[_chat_language(msgs)][cid] = msgs
        groups += [(f"{NAMES.get(lang, lang)} ({paths[0].name})", sub) for lang, sub in sorted(by_lang.items())]
    rows = []
    for label, chats in groups:
        qs = make_queries(chats, n)
        rows.append((label, qs))
        if label.startswith("Arabic"):
            rows.append((f"{label}, typed without harakat/hamza", [(c, m, typed(q)) for c, m, q in qs]))
        anyq = make_queries(chats, n, distinct=False)
        if anyq != qs:
            rows.append((f"{label}{ANY}", anyq))
    return rows


async def _bench(tmp: Path, model, files: list[Path], rows) -> tuple[dict, dict]:
    from actors.runtime import open_memory
    from memory.importer import import_transcript

    out: dict[str, tuple[float, float]] = {}
    async with open_memory(common.default_config(), tmp / "data", model=model) as memory:
        t0 = time.perf_counter()
        for f in files:
            await import_transcript(memory, f)
        await memory.flush()
        await memory.vectors.optimize()
        import_s = time.perf_counter() - t0
        for label, qs in rows:
            res = []
            for mode in ("hybrid", "fts"):
                hits = 0
                for chat_id, message_id, q in qs:
                    rec = await memory.recall(chat_id, q, K, mode=mode)
                    hits += message_id in [h.message_id for h in rec.hits]
                res.append(100 * hits / max(1, len(qs)))
            out[label] = (res[0], res[1])
            progress(f"recall_scripts: {label:<50} recall@{K} {res[0]:5.1f}   BM25 only {res[1]:5.1f}   ({len(qs)} queries)")
    return out, {"import_s": import_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.recall_scripts", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--file", type=Path, action="append", help="measure this transcript instead (repeatable)")
    ap.add_argument("--catalogs", action="append", metavar="LOCALE",
                    help="measure the gettext catalogs of /usr/share/locale/LOCALE instead (real text; repeatable)")
    ap.add_argument("--segmenter", choices=("ngram", "jieba"), default="ngram", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    files = list(args.file or [])
    with tempfile.TemporaryDirectory(prefix="kith-bench-catalogs-") as tmp:
        for i, locale in enumerate(args.catalogs or []):
            lines = catalog_chat(locale, -1009200000001 - i)
            if not lines:
                ap.error(f"no gettext catalogs with text in /usr/share/locale/{locale}/LC_MESSAGES")
            files.append(_write(Path(tmp) / f"{locale}.jsonl", lines))
        return common.main_single("recall_scripts", lambda quick: run(quick, files or None, args.segmenter),
                                  ["--quick"] * args.quick + ["--json"] * args.json)


if __name__ == "__main__":
    sys.exit(main())
