"""VectorMemory (LanceDB) and Indexer: real LanceDB in tmp_path, the real embedding model, real IRC text."""
from __future__ import annotations

import json
import random
import re
import threading
import zlib
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from memory.errors import MemoryStoreError
from memory.indexer import Indexer
from memory.types import StoredMessage
from memory.vector_rows import MemoryRow, fts_terms
from memory.vectors import VectorMemory
from providers.embedder import Embedder
from tests.task_groups import live_tasks

pytestmark = pytest.mark.anyio

IRC = Path("/work/shared/data/ubuntu-irc")
FILE_A = IRC / "2009-03-03_10.jsonl"
FILE_B = IRC / "2016-12-19_20.jsonl"
PER_CHAT = 400  # messages per chat: enough for meaningful search, cheap to embed

WEIRD_QUERIES = [
    "",
    "   ",
    '"AND OR NOT :(',
    "AND",
    "OR OR OR",
    "NOT",
    "title:foo AND (bar OR",
    "a" * 100_000,
    "grub " * 20_000,
    "كيف أقوم بتثبيت أوبونتو",
    "如何安装乌班图系统",
    "ウブントゥをインストール",
    "🎉🔥💀 🙃",
    "'; DROP TABLE memories; --",
    "\\ \\\\ \" ' ` ~ * ? + - ! ^ [ ] { }",
    "\x00\x01 nul",
    "_____",
    "a:b:c",
]


def read_transcript(path: Path, limit: int) -> list[StoredMessage]:
    """A minimal JSONL transcript reader for tests (the official parser lives elsewhere)."""
    out: list[StoredMessage] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            user = o["user"]
            out.append(
                StoredMessage(
                    chat_id=int(o["chat_id"]),
                    message_id=int(o["message_id"]),
                    user_id=int(o.get("user_id") or zlib.crc32(user.encode()) + 1),
                    user_name=user,
                    text=o.get("text") or "",
                    date=datetime.fromisoformat(o["date"].replace("Z", "+00:00")).astimezone(UTC),
                    reply_to=o.get("reply_to"),
                )
            )
            if len(out) >= limit:
                break
    return out


def embed_chats(st_model, per_chat: int) -> dict:
    """The first ``per_chat`` messages (non-empty) of two real IRC chats, embedded:
    {chat_id: (messages, float32[n, 384])}."""
    enc = Embedder(st_model)
    out = {}
    for path in (FILE_A, FILE_B):
        msgs = [m for m in read_transcript(path, per_chat) if m.text.strip()]
        out[msgs[0].chat_id] = (msgs, enc.encode_sync([m.text for m in msgs]))
    assert len(out) == 2
    return out


@pytest.fixture(scope="module")
def corpus(st_model):
    """Two real IRC chats, embedded once per module: {chat_id: (messages, vectors)}."""
    return embed_chats(st_model, PER_CHAT)


def rows_of(msgs, vecs) -> list[MemoryRow]:
    return [
        MemoryRow(m.chat_id, m.message_id, m.user_id, m.user_name, m.text, m.date, vecs[i])
        for i, m in enumerate(msgs)
    ]


def chats(corpus) -> tuple[int, int]:
    a, b = sorted(corpus)
    return a, b


def distinctive(msgs, rng: random.Random, n: int) -> list[tuple[StoredMessage, str]]:
    """n messages whose text is unique in the chat, each with a 7-word phrase of it that occurs in no
    other message and holds at least 2 rare words (in at most 2 messages of the chat)."""
    texts = [m.text.lower() for m in msgs]
    df: dict[str, int] = {}
    for t in texts:
        for w in set(re.findall(r"\w+", t)):
            df[w] = df.get(w, 0) + 1
    candidates = []
    for i, m in enumerate(msgs):
        words = m.text.split()
        for start in range(0, len(words) - 6):
            phrase = " ".join(words[start : start + 7])
            rare = {w for w in re.findall(r"\w+", phrase.lower()) if len(w) >= 4 and df[w] <= 2}
            if len(rare) >= 2 and sum(phrase.lower() in t for t in texts) == 1 and texts.count(texts[i]) == 1:
                candidates.append((m, phrase))
                break
    return rng.sample(candidates, n)


@asynccontextmanager
async def store(tmp_path: Path, corpus, *, vector_index: bool = False):
    """A VectorMemory holding both chats; with ``vector_index`` the IVF index is built (else flat search)."""
    async with VectorMemory(tmp_path / "memory", vector_index_min_rows=256 if vector_index else 10**9) as vm:
        for msgs, vecs in corpus.values():
            await vm.add(rows_of(msgs, vecs))
        if vector_index:
            await vm.optimize()
        yield vm


# ---------------------------------------------------------------- basic behaviour


async def test_add_count_and_message_ids(tmp_path, corpus):
    a, b = chats(corpus)
    async with VectorMemory(tmp_path / "memory") as vm:
        assert await vm.count() == 0
        assert await vm.search(a, "anything", None) == []
        for msgs, vecs in corpus.values():
            await vm.add(rows_of(msgs, vecs))
        na, nb = len(corpus[a][0]), len(corpus[b][0])
        assert await vm.count(a) == na and await vm.count(b) == nb and await vm.count() == na + nb
        assert await vm.message_ids(a) == {m.message_id for m in corpus[a][0]}
        assert await vm.count(12345) == 0 and await vm.message_ids(12345) == set()
    # reopening finds the same table and its indexes
    async with VectorMemory(tmp_path / "memory") as vm:
        assert await vm.count() == na + nb


@pytest.mark.parametrize("vector_index", [False, True], ids=["flat", "ivf"])
async def test_distinctive_phrase_is_found_in_every_mode(tmp_path, corpus, embedder, vector_index):
    async with store(tmp_path, corpus, vector_index=vector_index) as vm:
        rng = random.Random(7)
        misses: dict[str, list[str]] = {"hybrid": [], "vector": [], "fts": []}
        total = 0
        for chat_id, (msgs, _) in corpus.items():
            for msg, phrase in distinctive(msgs, rng, 15):
                total += 1
                qv = await embedder.embed_one(phrase)
                for mode in misses:
                    hits = await vm.search(chat_id, phrase, qv, k=3, mode=mode)
                    assert all(h.chat_id == chat_id for h in hits)
                    if msg.message_id not in [h.message_id for h in hits]:
                        misses[mode].append(phrase)
        # full text finds these exact phrases; a 7-word phrase's embedding is usually nearest its
        # message's. Rank fusion can lose a row that only one leg found. Measured over 120 such
        # queries (top 3): fts 118, hybrid 112, vector 103 -- hence the allowances.
        assert misses["fts"] == [], misses
        assert len(misses["hybrid"]) <= 4, misses
        assert len(misses["vector"]) <= 7, misses


async def test_hit_fields_and_score_parts(tmp_path, corpus, embedder):
    a, _ = chats(corpus)
    msg = next(m for m in corpus[a][0] if len(m.text.split()) >= 8)
    async with VectorMemory(tmp_path / "memory") as vm:
        await vm.add(rows_of(*corpus[a]))
        qv = await embedder.embed_one(msg.text)
        hits = await vm.search(a, msg.text, qv, k=5)
        top = hits[0]
        assert top.message_id == msg.message_id
        assert (top.chat_id, top.user_id, top.user_name, top.text, top.kind) == (
            msg.chat_id, msg.user_id, msg.user_name, msg.text, "message"
        )
        assert top.date == msg.date and top.date.tzinfo is not None and top.date.utcoffset().total_seconds() == 0
        assert set(top.parts) == {"vector", "fts", "rrf"}
        assert top.parts["vector"] == pytest.approx(1.0, abs=1e-3)
        assert top.parts["fts"] > 0
        assert top.score == top.parts["rrf"] <= 2 / 61 + 1e-12
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        v = await vm.search(a, "", qv, k=5, mode="vector")
        assert v[0].message_id == msg.message_id and v[0].score == pytest.approx(1.0, abs=1e-3)
        assert set(v[0].parts) == {"vector"}
        f = await vm.search(a, msg.text, None, k=5, mode="fts")
        assert f[0].score == f[0].parts["fts"] > 0
        # hybrid without a vector is full text only; without terms it is vector only
        assert (await vm.search(a, msg.text, None, k=5))[0].message_id == msg.message_id
        assert (await vm.search(a, "!!!", qv, k=5))[0].message_id == msg.message_id
        # the user name is searchable (content = "user: text")
        by_name = await vm.search(a, msg.user_name, None, k=50, mode="fts")
        assert msg.user_name in {h.user_name for h in by_name}


async def test_exclude_ids_and_k(tmp_path, corpus, embedder):
    a, _ = chats(corpus)
    msg = next(m for m in corpus[a][0] if len(m.text.split()) >= 8)
    async with VectorMemory(tmp_path / "memory") as vm:
        await vm.add(rows_of(*corpus[a]))
        qv = await embedder.embed_one(msg.text)
        for mode in ("hybrid", "vector", "fts"):
            hits = await vm.search(a, msg.text, qv, k=7, mode=mode, exclude_ids=[msg.message_id])
            assert msg.message_id not in [h.message_id for h in hits]
            assert 0 < len(hits) <= 7
            assert await vm.search(a, msg.text, qv, k=0, mode=mode) == []
        window = [m.message_id for m in corpus[a][0][:300]]
        hits = await vm.search(a, msg.text, qv, k=20, exclude_ids=window)
        assert hits and not set(window) & {h.message_id for h in hits}


async def test_bad_arguments(tmp_path):
    async with VectorMemory(tmp_path / "memory") as vm:
        with pytest.raises(ValueError):
            await vm.search(1, "x", None, mode="vector")
        with pytest.raises(ValueError):
            await vm.search(1, "x", np.zeros(384, np.float32), mode="semantic")
        with pytest.raises(ValueError):
            await vm.search(1, "x", np.zeros(10, np.float32))
        with pytest.raises(ValueError):
            await vm.add([MemoryRow(1, 1, 1, "u", "t", datetime.now(UTC), np.zeros(3, np.float32))])
    with pytest.raises(MemoryStoreError):
        await VectorMemory(tmp_path / "memory").count()  # not open
    # a table is opened as it is (open_memory compares it with the embedding model in use) ...
    async with VectorMemory(tmp_path / "other", dim=8, embedding_model="tiny") as vm:
        await vm.add([MemoryRow(1, 1, 1, "u", "t", datetime.now(UTC), np.ones(8, np.float32) / 8**0.5)])
    async with VectorMemory(tmp_path / "other", dim=384) as vm:
        assert (vm.embedding_model, vm.dim) == ("tiny", 8)
        with pytest.raises(ValueError):
            await vm.add([MemoryRow(1, 2, 1, "u", "t", datetime.now(UTC), np.zeros(384, np.float32))])
    # ... except an empty one, made afresh for the model in use
    async with VectorMemory(tmp_path / "empty", dim=8, embedding_model="tiny"):
        pass
    async with VectorMemory(tmp_path / "empty", dim=384) as vm:
        assert (vm.embedding_model, vm.dim) == ("all-MiniLM-L6-v2", 384)


def lance_loops() -> int:
    """The lancedb loop threads alive (``memory.lance_loop``: one per open VectorMemory)."""
    return sum(t.name == "lancedb-loop" and t.is_alive() for t in threading.enumerate())


async def test_an_open_that_fails_half_way_stops_its_loop_and_raises_its_own_error(tmp_path):
    path = tmp_path / "memory"
    path.mkdir()
    (path / "memories.lance").write_text("not a table")  # the lancedb loop starts, then the open fails
    tasks, loops = live_tasks(), lance_loops()
    with pytest.raises(MemoryStoreError, match="memories.lance"):
        async with VectorMemory(path):
            pytest.fail("the body ran after a failed open")
    assert (live_tasks(), lance_loops()) == (tasks, loops)


async def test_leaving_stops_the_lancedb_loop(tmp_path):
    tasks, loops = live_tasks(), lance_loops()
    async with VectorMemory(tmp_path / "memory") as vm:
        assert lance_loops() == loops + 1
        await vm.add([MemoryRow(1, 1, 1, "u", "t", datetime.now(UTC), np.ones(384, np.float32) / 384**0.5)])
    assert (live_tasks(), lance_loops()) == (tasks, loops)
    with pytest.raises(MemoryStoreError):
        await vm.count()  # closed


# ---------------------------------------------------------------- isolation


@pytest.mark.parametrize("vector_index", [False, True], ids=["flat", "ivf"])
async def test_search_never_crosses_chats(tmp_path, corpus, embedder, vector_index):
    """For many queries (including texts that exist only in the other chat) every hit is of the chat searched."""
    a, b = chats(corpus)
    async with store(tmp_path, corpus, vector_index=vector_index) as vm:
        rng = random.Random(20240517)
        texts = {c: [m.text for m in corpus[c][0]] for c in (a, b)}
        words_b = sorted({w for t in texts[b] for w in t.split()} - {w for t in texts[a] for w in t.split()})
        queries: list[tuple[int, str]] = []
        for _ in range(40):
            src, dst = rng.choice([(b, a), (a, b)])
            pick = rng.random()
            if pick < 0.5:
                q = rng.choice(texts[src])  # a message that exists only in the other chat
            elif pick < 0.8 and src == b:
                q = " ".join(rng.sample(words_b, 4))  # words that appear only in chat B
            else:
                q = rng.choice(WEIRD_QUERIES[:7] + WEIRD_QUERIES[9:])
            queries.append((dst, q))
        vectors = await embedder.embed([q for _, q in queries])
        for (dst, q), qv in zip(queries, vectors):
            for mode in ("hybrid", "vector", "fts"):
                hits = await vm.search(dst, q, qv, k=rng.choice([1, 5, 10, 50]), mode=mode)
                assert all(h.chat_id == dst for h in hits), (dst, q[:80], mode)
                own = set(texts[dst])
                assert all(h.text in own for h in hits)
        # a chat that has no rows at all sees nothing, whatever the query
        for q, qv in zip([q for _, q in queries[:10]], vectors[:10]):
            assert await vm.search(777, q, qv, k=10) == []


# ---------------------------------------------------------------- idempotence, deletes, freshness


async def test_readding_does_not_duplicate_and_updates(tmp_path, corpus, embedder):
    a, _ = chats(corpus)
    msgs, vecs = corpus[a]
    async with VectorMemory(tmp_path / "memory") as vm:
        await vm.add(rows_of(msgs, vecs))
        await vm.add(rows_of(msgs, vecs))
        await vm.add(rows_of(msgs[:50], vecs[:50]) + rows_of(msgs[:50], vecs[:50]))  # duplicates in one batch
        assert await vm.count(a) == len(msgs)
        await vm.optimize()
        await vm.add(rows_of(msgs[:100], vecs[:100]))
        assert await vm.count(a) == len(msgs)
        # an edited message replaces its row
        m = msgs[3]
        new_text = "zanzibar quokka telemetry"
        await vm.add([MemoryRow(a, m.message_id, m.user_id, m.user_name, new_text, m.date, await embedder.embed_one(new_text))])
        assert await vm.count(a) == len(msgs)
        hits = await vm.search(a, "quokka", None, k=3, mode="fts")
        assert [h.message_id for h in hits] == [m.message_id] and hits[0].text == new_text


async def test_vector_counts_reads_what_vector_memory_holds_without_lancedb(tmp_path, corpus):
    """``kith memory stats`` with no bot reads counts through pylance (memory.vector_counts): the same
    numbers and ids as VectorMemory, after deletes, and from the table a reindex made current."""
    from memory.vector_counts import VectorCounts
    from memory.vector_rows import write_current

    a, b = chats(corpus)
    async with VectorCounts(tmp_path / "memory") as counts:  # nothing stored yet: zero, nothing created
        assert await counts.count() == 0 and await counts.ids_by_chat() == {}
    assert not (tmp_path / "memory").exists()
    async with VectorMemory(tmp_path / "memory") as vm:
        for msgs, vecs in corpus.values():
            await vm.add(rows_of(msgs, vecs))
        await vm.delete(a, message_ids=[m.message_id for m in corpus[a][0][:7]])
        async with VectorCounts(tmp_path / "memory") as counts:
            assert await counts.count() == await vm.count() == 2 * PER_CHAT - 7
            assert await counts.count(a) == PER_CHAT - 7 and await counts.count(b) == PER_CHAT
            assert await counts.count(12345) == 0
            assert await counts.ids_by_chat() == await vm.ids_by_chat()
    # the table a reindex switched to is the one counted
    msgs, vecs = corpus[b]
    async with VectorMemory(tmp_path / "memory", table="memories_next") as vm:
        await vm.add(rows_of(msgs[:5], vecs[:5]))
    write_current(tmp_path / "memory", "memories_next")
    async with VectorCounts(tmp_path / "memory") as counts:
        assert await counts.count() == 5 and set(await counts.ids_by_chat()) == {b}


async def test_delete_by_ids_user_and_chat(tmp_path, corpus):
    a, b = chats(corpus)
    msgs_a = corpus[a][0]
    async with VectorMemory(tmp_path / "memory") as vm:
        for msgs, vecs in corpus.values():
            await vm.add(rows_of(msgs, vecs))
        na, nb = len(msgs_a), len(corpus[b][0])
        ids = [m.message_id for m in msgs_a[:10]]
        assert await vm.delete(a, message_ids=[*ids, 10 ** 12]) == 10
        assert await vm.delete(a, message_ids=ids) == 0
        assert await vm.delete(a, message_ids=[]) == 0
        assert not set(ids) & await vm.message_ids(a)
        # a user's rows in chat A only
        user = max({m.user_id for m in msgs_a[10:]}, key=lambda u: sum(m.user_id == u for m in msgs_a[10:]))
        n_user = sum(m.user_id == user for m in msgs_a[10:])
        assert await vm.delete(a, user_id=user) == n_user
        assert await vm.count(a) == na - 10 - n_user
        assert all(h.user_id != user for h in await vm.search(a, msgs_a[20].text, None, k=50, mode="fts"))
        assert await vm.count(b) == nb
        # ids and user together: the intersection
        other = next(m for m in msgs_a[10:] if m.user_id != user)
        assert await vm.delete(a, message_ids=[other.message_id], user_id=other.user_id + 1) == 0
        assert await vm.delete(a, message_ids=[other.message_id], user_id=other.user_id) == 1
        # the whole chat
        assert await vm.delete(a) == na - 10 - n_user - 1
        assert await vm.count(a) == 0 and await vm.count(b) == nb


@pytest.mark.parametrize("vector_index", [False, True], ids=["flat", "ivf"])
async def test_rows_added_after_indexing_are_found(tmp_path, corpus, embedder, vector_index):
    a, b = chats(corpus)
    async with store(tmp_path, corpus, vector_index=vector_index) as vm:
        await vm.optimize()  # everything so far is in every index (FTS, BTree and, for "ivf", IVF_SQ)
        fresh = [
            "the flux capacitor on my thinkpad overheats when compiling the kernel",
            "كيف أقوم بتثبيت أوبونتو على حاسوبي",
            "xylophonist wombat synergy",
        ]
        vecs = await embedder.embed(fresh)
        base = 10**9
        now = datetime.now(UTC)
        await vm.add([MemoryRow(a, base + i, 42, "newbie", t, now, vecs[i]) for i, t in enumerate(fresh)])
        for stage in ("unindexed", "optimized"):
            for i, t in enumerate(fresh):
                for mode in ("fts", "vector", "hybrid"):
                    hits = await vm.search(a, t, vecs[i], k=3, mode=mode)
                    assert hits and hits[0].message_id == base + i, (stage, mode, t)
                other = await vm.search(b, t, vecs[i], k=50)
                assert other and all(h.chat_id == b and h.message_id < base for h in other)
            one_word = await vm.search(a, "أوبونتو", None, k=3, mode="fts")
            assert [h.message_id for h in one_word] == [base + 1]
            assert [h.message_id for h in await vm.search(a, "WOMBAT!", None, k=3, mode="fts")] == [base + 2]
            await vm.optimize()


async def test_weird_queries_never_raise(tmp_path, corpus, embedder):
    a, _ = chats(corpus)
    async with VectorMemory(tmp_path / "memory") as vm:
        await vm.add(rows_of(*corpus[a]))
        vecs = await embedder.embed(WEIRD_QUERIES)
        for q, qv in zip(WEIRD_QUERIES, vecs):
            for mode in ("hybrid", "vector", "fts"):
                hits = await vm.search(a, q, qv, k=5, mode=mode)
                assert all(h.chat_id == a for h in hits)
            await vm.search(a, q, None, k=5, mode="hybrid")
            await vm.search(a, q, None, k=5, mode="fts")


def test_fts_terms():
    assert fts_terms('"AND OR NOT :(') == ["and", "or", "not"]
    assert fts_terms("apt-get install: grub2!!") == ["apt", "get", "install", "grub2"]
    assert fts_terms("") == [] and fts_terms("🎉 ... ___") == []
    assert fts_terms("如何安装 مرحبا") == ["如何安装", "مرحبا"]
    assert len(fts_terms(" ".join(f"w{i}" for i in range(10_000)))) == 64
    assert fts_terms("Grub grub GRUB") == ["grub"]


async def test_concurrent_searches_and_writes(tmp_path, corpus):
    """Searches of both chats run while rows are added, deleted and optimized; no errors, no leaks."""
    import anyio

    a, b = chats(corpus)
    (ma, va), (mb, vb) = corpus[a], corpus[b]
    async with VectorMemory(tmp_path / "memory", vector_index_min_rows=200) as vm:
        await vm.add(rows_of(ma[:200], va[:200]) + rows_of(mb[:200], vb[:200]))
        errors: list[BaseException] = []

        async def writer() -> None:
            for i in range(200, 400, 50):
                await vm.add(rows_of(ma[i : i + 50], va[i : i + 50]) + rows_of(mb[i : i + 50], vb[i : i + 50]))
                await vm.optimize()
            await vm.delete(b, message_ids=[m.message_id for m in mb[:20]])

        async def searcher(chat: int, msgs, vecs) -> None:
            for j in range(30):
                i = (j * 37) % len(msgs)
                try:
                    hits = await vm.search(chat, msgs[i].text, vecs[i], k=5)
                except BaseException as exc:
                    errors.append(exc)
                    raise
                assert all(h.chat_id == chat for h in hits)

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            for chat, (msgs, vecs) in corpus.items():
                tg.start_soon(searcher, chat, msgs, vecs)
                tg.start_soon(searcher, chat, msgs, vecs)
        assert not errors
        assert await vm.count(a) == len(ma) and await vm.count(b) == len(mb) - 20


async def test_optimize_builds_and_retrains_the_vector_index(tmp_path, corpus):
    a, _ = chats(corpus)
    msgs, vecs = corpus[a]

    async def segments(vm) -> int:
        ix = [i for i in await vm.run(vm.lance_table.list_indices) if i.name == "vector_idx"]
        return ix[0].num_segments if ix else 0

    async with VectorMemory(tmp_path / "memory", vector_index_min_rows=300, max_index_segments=2) as vm:
        await vm.add(rows_of(msgs[:200], vecs[:200]))
        await vm.optimize()
        assert await segments(vm) == 0  # below vector_index_min_rows: flat search
        await vm.add(rows_of(msgs[200:320], vecs[200:320]))
        await vm.optimize()
        assert await segments(vm) == 1
        seen = []
        for i in range(320, 400, 20):
            await vm.add(rows_of(msgs[i : i + 20], vecs[i : i + 20]))
            await vm.optimize()
            seen.append(await segments(vm))
        assert max(seen) <= 2 and 1 in seen[1:]  # deltas accumulate, then a retrain resets them
        hits = await vm.search(a, "", vecs[390], k=1, mode="vector")
        assert hits[0].message_id == msgs[390].message_id


# ---------------------------------------------------------------- indexer


async def test_indexer_batches_and_flush_makes_searchable(tmp_path, corpus, embedder):
    a, b = chats(corpus)
    msgs = corpus[a][0][:120] + corpus[b][0][:120]
    blank = [
        StoredMessage(a, 10**9 + 1, 1, "x", "", datetime.now(UTC)),
        StoredMessage(a, 10**9 + 2, 1, "x", "  \n\t ", datetime.now(UTC)),
    ]
    async with VectorMemory(tmp_path / "memory") as vm:
        async with Indexer(vm, embedder, batch=64, max_wait_s=5.0, optimize_every=0) as ix:
            ix.submit(blank)
            for m in msgs:  # one message at a time, as a live chat submits them
                ix.submit([m])
            await ix.flush()  # must not wait for max_wait_s on the partial batch
            assert ix.indexed == len(msgs) and ix.skipped == 2 and ix.failed == 0 and ix.pending == 0
            assert await vm.count() == len(msgs)
            assert embedder.batches <= -(-len(msgs) // embedder.max_batch) + 1  # full model calls, not one per message
            target = next(m for m in msgs if m.chat_id == b and len(m.text.split()) >= 8)
            hits = await vm.search(b, target.text, await embedder.embed_one(target.text), k=3)
            assert hits[0].message_id == target.message_id
            await ix.flush()  # nothing pending: returns at once
            # a late message becomes searchable on flush
            late = StoredMessage(a, 10**9 + 3, 5, "late", "ocelot firmware regression", datetime.now(UTC))
            ix.submit([late])
            await ix.flush()
            assert [h.message_id for h in await vm.search(a, "ocelot", None, k=3, mode="fts")] == [late.message_id]


async def test_indexer_exit_drains_and_optimizes(tmp_path, corpus, embedder):
    a, _ = chats(corpus)
    msgs = corpus[a][0][:160]
    async with VectorMemory(tmp_path / "memory", vector_index_min_rows=10**9) as vm:
        async with Indexer(vm, embedder, batch=32, max_wait_s=0.05, optimize_every=60) as ix:
            ix.submit(msgs)
        assert ix.indexed == len(msgs) and ix.pending == 0
        assert ix.optimizations >= 1
        assert await vm.count(a) == len(msgs)
        with pytest.raises(RuntimeError):
            ix.submit(msgs[:1])


async def test_indexer_optimizes_as_soon_as_a_burst_drains_not_after_the_idle_wait(tmp_path, corpus, embedder):
    import anyio

    from memory.indexer import OPTIMIZE_ON_DRAIN_ROWS, OPTIMIZE_WHEN_IDLE_S

    a, _ = chats(corpus)
    msgs = corpus[a][0][: OPTIMIZE_ON_DRAIN_ROWS + 20]
    async with VectorMemory(tmp_path / "memory", vector_index_min_rows=10**9) as vm:
        async with Indexer(vm, embedder, batch=len(msgs), max_wait_s=0.05, optimize_every=10**9) as ix:
            ix.submit(msgs[:10])  # a small burst: left for the idle optimize
            await ix.flush()
            await anyio.sleep(0.3)
            assert ix.optimizations == 0
            ix.submit(msgs[10:])  # one append of more than OPTIMIZE_ON_DRAIN_ROWS rows, then the queue is empty
            with anyio.fail_after(OPTIMIZE_WHEN_IDLE_S - 1):  # settle(): flush, then the optimize it started
                await ix.settle()
            assert ix.optimizations == 1
            stats = await vm.run(vm.lance_table.index_stats, "terms_idx")
            assert stats.num_unindexed_rows == 0 and stats.num_indexed_rows == len(msgs)


async def test_indexer_drops_failing_batch_and_continues(tmp_path, corpus, embedder):
    a, _ = chats(corpus)
    msgs = corpus[a][0][:20]

    class Flaky:
        """Fails on one specific batch, embeds the rest with the real embedder."""

        batches = 0

        async def embed(self, texts):
            if "BOOM" in texts:
                raise RuntimeError("model exploded")
            return await embedder.embed(texts)

    async with VectorMemory(tmp_path / "memory") as vm:
        async with Indexer(vm, Flaky(), batch=100, max_wait_s=0.01) as ix:
            ix.submit([StoredMessage(a, 10**9, 1, "x", "BOOM", datetime.now(UTC))])
            await ix.flush()
            ix.submit(msgs)
            await ix.flush()
        assert ix.failed == 1 and ix.indexed == len(msgs)
        assert await vm.count(a) == len(msgs)


async def test_a_failing_bulk_window_loses_only_the_part_with_the_bad_text(tmp_path, corpus, embedder):
    a, _ = chats(corpus)
    msgs = [m for m in corpus[a][0] if m.text.strip()][:60]

    class Flaky:
        async def embed(self, texts):
            if "BOOM" in texts:
                raise RuntimeError("model exploded")
            return await embedder.embed(texts)

    bad = StoredMessage(a, 10**9, 1, "x", "BOOM", datetime.now(UTC))
    async with VectorMemory(tmp_path / "memory") as vm:
        async with Indexer(vm, Flaky(), batch=10, bulk_batch=1000, max_wait_s=0.01) as ix:
            ix.submit([*msgs[:30], bad, *msgs[30:]])  # one window of 61 (all queued at once)
            await ix.flush()
        assert ix.failed == 10 and ix.indexed == 51  # the live-sized part holding BOOM, not all 61
        assert await vm.count(a) == 51
