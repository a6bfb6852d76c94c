"""Hot chats (memory/hot.py): recall served from RAM gives what LanceDB gives, and stays consistent
with adds, deletes and the row budget. Real LanceDB in tmp_path, the real model, real #ubuntu IRC text.
"""
from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from memory.hot import ChatRows, HotChats
from memory.retrieval import DEFAULT
from memory.vector_rows import MemoryRow
from memory.vectors import VectorMemory
from providers.embedder import Embedder
from tests.test_vectors import embed_chats, rows_of

pytestmark = pytest.mark.anyio

PER_CHAT = 300
QUESTIONS = [
    "how do I install the nvidia driver",
    "grub does not boot after the upgrade",
    "which package has the apt-file command",
    "my wireless card is not detected",
    "how can I mount an ntfs partition",
    "what is the command to see the kernel version",
]


@pytest.fixture(scope="module")
def corpus(st_model):
    """Two real IRC chats and the questions, embedded once: ({chat_id: (messages, vectors)}, qvecs)."""
    return embed_chats(st_model, PER_CHAT), Embedder(st_model).encode_sync(QUESTIONS)


async def _filled(path, corpus, **kw) -> VectorMemory:
    vm = VectorMemory(path, vector_index_min_rows=10**9, **kw)
    await vm.__aenter__()
    for msgs, vecs in corpus[0].values():
        await vm.add(rows_of(msgs, vecs))
    return vm


async def _recall(vm, chat, q, qvec, exclude=(), settings=DEFAULT):
    return await vm.recall(chat, q, qvec, 10, settings=settings, exclude_ids=exclude)


async def test_hot_recall_returns_what_lancedb_returns(tmp_path, corpus):
    chats, qvecs = corpus
    cold = await _filled(tmp_path / "cold", corpus)  # hot_rows=0: every leg read from LanceDB
    hot = await _filled(tmp_path / "hot", corpus, hot_rows=10_000)
    try:
        rng = random.Random(7)
        for chat, (msgs, _) in chats.items():
            await _recall(hot, chat, QUESTIONS[0], qvecs[0])  # the first recall loads the chat
            assert hot.hot.get(chat) is not None and hot.hot.get(chat).n == len(msgs)
            exclude = {m.message_id for m in rng.sample(msgs, 30)}
            for settings in (DEFAULT, replace(DEFAULT, neighbour_weight=0.0, neighbour_weight_2=0.0)):
                for q, v in zip(QUESTIONS, qvecs):
                    for ex in ((), exclude):
                        want = await _recall(cold, chat, q, v, ex, settings)
                        got = await _recall(hot, chat, q, v, ex, settings)
                        assert [h.message_id for h in got] == [h.message_id for h in want], q
                        assert np.allclose([h.score for h in got], [h.score for h in want], atol=1e-4)
                        assert all(h.chat_id == chat and h.message_id not in ex for h in got)
                        assert [h.text for h in got] == [h.text for h in want]
                        assert [h.date for h in got] == [h.date for h in want]
    finally:
        await cold.__aexit__(None, None, None)
        await hot.__aexit__(None, None, None)


async def test_hot_chat_follows_adds_replacements_and_deletes(tmp_path, corpus, st_model):
    chats, qvecs = corpus
    chat, (msgs, _vecs) = sorted(chats.items())[0]
    vm = await _filled(tmp_path / "m", corpus, hot_rows=10_000)
    enc = Embedder(st_model)
    try:
        await _recall(vm, chat, QUESTIONS[0], qvecs[0])
        assert chat in vm.hot
        # a new message, added after the chat became hot, is recalled at once
        text = "the zfs pool on my raspberry pi lost its l2arc cache device"
        new = MemoryRow(chat, 10**9, 42, "newcomer", text, msgs[-1].date + timedelta(minutes=1), enc.encode_sync([text])[0])
        await vm.add([new])
        assert vm.hot.get(chat).n == len(msgs) + 1
        q = "raspberry pi zfs cache device"
        hits = await _recall(vm, chat, q, enc.encode_sync([q])[0])
        assert hits[0].message_id == 10**9 and hits[0].user_name == "newcomer"
        # re-adding the key replaces the row (text and vector), it is not a second row
        other = "completely different words about printers and cups"
        await vm.add([replace(new, text=other, vector=enc.encode_sync([other])[0])])
        assert vm.hot.get(chat).n == len(msgs) + 1
        hits = await _recall(vm, chat, "printers cups", enc.encode_sync(["printers cups"])[0])
        assert hits[0].message_id == 10**9 and hits[0].text == other
        # a forgotten sender is never recalled again, from RAM either
        gone = msgs[5].user_id
        await vm.delete(chat, user_id=gone)
        assert chat not in vm.hot  # dropped; read again by the next recall
        for q, v in zip(QUESTIONS, qvecs):
            assert all(h.user_id != gone for h in await _recall(vm, chat, q, v))
        assert chat in vm.hot and all(h != gone for h in vm.hot.get(chat)._cols["user_id"])
    finally:
        await vm.__aexit__(None, None, None)


def _chat(chat_id: int, n: int) -> ChatRows:
    rows = ChatRows(chat_id, 4)
    vecs = np.eye(4, dtype=np.float32)[np.arange(n) % 4]
    rows.upsert(pa.table({
        "chat_id": [chat_id] * n, "message_id": list(range(n)), "user_id": [1] * n, "user_name": ["u"] * n,
        "kind": ["message"] * n, "text": [f"t{i}" for i in range(n)],
        "date": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), 4),
    }))
    return rows


def test_row_budget_evicts_the_least_recently_recalled_chat():
    hot = HotChats(max_rows=100)
    assert hot.put(_chat(1, 40)) and hot.put(_chat(2, 40))
    hot.touch(1)  # chat 1 recalled last: chat 2 is now the least recent
    assert hot.put(_chat(3, 40))
    assert 1 in hot and 3 in hot and 2 not in hot and hot.rows == 80 and hot.evictions == 1
    assert not hot.put(_chat(4, 51))  # more than half the budget: never held
    assert 4 not in hot and hot.rows == 80
    hot.drop(1)
    assert hot.rows == 40 and len(hot) == 1


async def test_a_chat_too_large_to_hold_is_recalled_from_lancedb(tmp_path, corpus):
    chats, qvecs = corpus
    a, (ma, _) = sorted(chats.items())[0]
    vm = await _filled(tmp_path / "s", corpus, hot_rows=len(ma))  # the chat has more than half of it
    try:
        want = await _recall(vm, a, QUESTIONS[2], qvecs[2])
        assert a not in vm.hot and vm.hot.rows == 0
        assert [h.message_id for h in await _recall(vm, a, QUESTIONS[2], qvecs[2])] == [h.message_id for h in want]
        assert want and all(h.chat_id == a for h in want)
    finally:
        await vm.__aexit__(None, None, None)
