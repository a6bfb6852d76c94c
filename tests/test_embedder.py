"""The micro-batching embedder: shapes, batching across callers, queries before bulk work."""
from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import numpy as np
import pytest

from providers.embedder import BESIDE_QUERIES_TEXTS, Embedder

pytestmark = pytest.mark.anyio


async def test_vectors_are_normalised_and_identical_texts_share_one_encoding(st_model):
    async with Embedder(st_model, max_batch=8) as emb:
        v = await emb.embed(["apt-get install", "apt-get install", "", "日本語のテキスト"])
        assert v.shape == (4, 384) and v.dtype == np.float32
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        assert np.array_equal(v[0], v[1])
        assert (await emb.embed([])).shape == (0, 384)


async def test_concurrent_callers_share_model_calls_and_get_their_own_rows(st_model):
    async with Embedder(st_model, max_batch=64, max_wait_s=0.05) as emb:
        texts = [f"message number {i} about grub" for i in range(40)]
        out: dict[int, np.ndarray] = {}

        async def one(i: int) -> None:
            out[i] = await emb.embed([texts[i]])

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert emb.batches <= 3
        alone = emb.encode_sync(texts)
        for i in range(40):
            assert np.allclose(out[i][0], alone[i], atol=1e-5)


async def test_a_query_overtakes_bulk_indexing_and_bulk_is_split_into_bounded_calls(st_model):
    async with Embedder(st_model, max_batch=16, max_wait_s=0) as emb:
        bulk_texts = [f"bulk text {i} on kernel modules" for i in range(160)]
        order: list[str] = []

        async def bulk() -> None:
            vecs = await emb.embed(bulk_texts)
            assert vecs.shape == (160, 384)
            assert np.allclose(vecs, emb.encode_sync(bulk_texts), atol=1e-5)
            order.append("bulk")

        async def query() -> None:
            await anyio.sleep(0.05)  # bulk work is already queued
            await emb.embed_one("which package provides Python.h?")
            order.append("query")

        async with anyio.create_task_group() as tg:
            tg.start_soon(bulk)
            tg.start_soon(query)
        assert order == ["query", "bulk"]
        assert emb.batches >= 10  # 160 texts in calls of at most 16 (+ the query)


async def test_bulk_texts_are_grouped_by_length_and_come_back_in_the_callers_order(st_model):
    slice_ = Path(__file__).resolve().parents[2] / "shared" / "data" / "ubuntu-irc" / "2009-03-03_10.jsonl"
    import json

    texts = [json.loads(line)["text"] for line in slice_.read_text(encoding="utf-8").splitlines()[:300]]
    async with Embedder(st_model, max_batch=32, max_wait_s=0, precision="fp32") as emb:
        calls: list[list[int]] = []
        real = emb.encoder.encode_batch

        def spy(batch):
            calls.append([len(t) for t in batch])
            return real(batch)

        emb.encoder.encode_batch = spy
        vecs = await emb.embed(texts)
    alone = np.stack([emb.encode_sync([t])[0] for t in texts[:40]])
    assert np.all((vecs[:40] * alone).sum(axis=1) >= 0.9999)  # each row is its own text's, in order
    spans = [max(c) - min(c) for c in calls if len(c) > 1]
    overall = max(len(t) for t in texts) - min(len(t) for t in texts)
    assert len(calls) >= 9 and max(spans[:-1]) < overall / 2  # each call holds texts of similar length


async def test_a_single_query_takes_the_traced_path_and_matches_encode(st_model):
    import json

    from providers.embedder import query_encoder

    enc = query_encoder(st_model)
    assert enc is not None and query_encoder(st_model) is enc  # built once per model
    conv = json.loads((Path(__file__).resolve().parents[2] / "shared/data/locomo-dev/locomo-dev.json").read_text())[0]
    questions = [q["question"] for q in conv["qa"][:40]] + ["", "x", "🙂 " * 300]
    want = st_model.encode([q or " " for q in questions], normalize_embeddings=True, convert_to_numpy=True)
    async with Embedder(st_model) as emb:
        got = np.stack([await emb.embed_one(q) for q in questions])
    assert got.dtype == np.float32 and got.shape == (len(questions), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float((got * want).sum(axis=1).min()) > 0.9999


def test_a_model_of_another_shape_gets_no_traced_encoder(st_model):
    from sentence_transformers import SentenceTransformer

    from providers.query_encoder import QueryEncoder

    no_normalize = SentenceTransformer(modules=[st_model[0], st_model[1]])
    assert QueryEncoder.build(no_normalize) is None


def _ubuntu_texts(n: int) -> list[str]:
    import json

    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ubuntu-irc" / "2011-05-29_19.jsonl"
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [t for t in texts if t.strip()][:n]


async def test_batches_in_bf16_agree_with_fp32_on_real_chat(st_model):
    texts = _ubuntu_texts(300)
    async with Embedder(st_model, precision="auto") as fast, Embedder(st_model, precision="fp32") as exact:
        a, b = await fast.embed(texts), await exact.embed(texts)
    assert a.dtype == np.float32 and np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert float((a * b).sum(axis=1).min()) >= 0.99  # per text, whichever precision the CPU allowed
    assert not exact.bf16


async def test_a_query_never_waits_inside_a_call_full_of_document_parts(st_model):
    part = "The backup server in rack 12 was replaced by a Dell R740 on 3 March; ticket 4711 tracks it. " * 10
    async with Embedder(st_model, max_batch=32, bulk_chars=4000) as emb:
        calls: list[int] = []
        encode = emb.encode_sync

        def spy(texts):
            calls.append(len(texts))
            return encode(texts)

        emb.encode_sync = spy
        async with anyio.create_task_group() as tg:
            tg.start_soon(emb.embed, [part] * 24)
            await anyio.sleep(0.02)
            q = await emb.embed_one("which ticket tracks the rack 12 server?")
        assert q.shape == (384,)
    assert calls.count(1) >= 1  # the query went alone
    assert max(calls) <= 5 and sum(calls) == 25  # bulk calls of <= 4000 characters (~920 each)


def test_a_live_window_of_mixed_lengths_is_cut_into_calls_of_similar_lengths(ov_encoder):
    from providers.encoder_pipeline import CALL_OVERHEAD_TOKENS, plan_calls

    texts = [*_ubuntu_texts(25), "The backup server in rack 12 was replaced by a Dell R740 on 3 March. " * 3]
    lengths = sorted(len(ov_encoder._tokenizer.encode(t).ids) for t in texts)
    calls = plan_calls(lengths, 32)
    assert next(a for a, _ in calls) == 0 and calls[-1][1] == len(lengths)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(calls))  # contiguous, every text once
    cost = sum(CALL_OVERHEAD_TOKENS + (b - a) * lengths[b - 1] for a, b in calls)
    assert len(calls) > 1 and cost < CALL_OVERHEAD_TOKENS + len(lengths) * lengths[-1]  # cheaper than one padded call
    even = plan_calls([5] * 70, 32)
    assert len(even) == 3 and all(b - a <= 32 for a, b in even)  # equal lengths: the fewest calls of <= 32
    seen: list[list[int]] = []
    real = ov_encoder._infer

    def spy(encodings, longest):
        seen.append([len(e.ids) for e in encodings])
        return real(encodings, longest)

    ov_encoder._infer = spy
    try:
        got = ov_encoder.encode_batch(texts)
    finally:
        del ov_encoder._infer
    assert sorted(n for call in seen for n in call) == lengths and len(seen) == len(calls)
    alone = np.stack([ov_encoder.encode_one(t) for t in texts])
    assert float((got * alone).sum(axis=1).min()) > 0.9999  # each row is its own text's, in the caller's order


async def test_bulk_calls_are_larger_only_where_queries_do_not_wait_for_them(st_model, ov_encoder):
    """Where a query runs beside the bulk call (OpenVINO's query model), an import's texts go in
    calls of up to BESIDE_QUERIES_TEXTS (fewer calls, less cost per text); elsewhere a call keeps
    max_batch texts, so that a query waits for one short call at most."""
    texts = _ubuntu_texts(200)

    async def calls_of(model) -> list[int]:
        async with Embedder(model, max_batch=32) as emb:
            seen: list[int] = []
            encode = emb.encode_sync

            def spy(batch, **kw):
                seen.append(len(batch))
                return encode(batch, **kw)

            emb.encode_sync = spy
            vecs = await emb.embed(texts)
        assert vecs.shape == (len(texts), 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        return seen

    assert max(await calls_of(st_model)) <= 32  # torch: queries wait for the call in hand
    if not getattr(ov_encoder, "concurrent_queries", False):
        pytest.skip("one core: no query model")
    beside = await calls_of(ov_encoder)
    assert len(beside) == 1 and beside[0] == len(texts) <= BESIDE_QUERIES_TEXTS


async def test_a_query_runs_beside_a_bulk_call_on_an_encoder_with_a_query_model(ov_encoder):
    """OpenVINO on a machine of several cores has a query model of its own: a recall query is
    answered while a bulk call of document parts is still inside the model, not after it."""
    if not getattr(ov_encoder, "concurrent_queries", False):
        pytest.skip("one core: no query model")
    part = "The backup server in rack 12 was replaced by a Dell R740 on 3 March; ticket 4711 tracks it. " * 10
    async with Embedder(ov_encoder, max_batch=128, bulk_chars=100_000) as emb:  # one long bulk call
        order: list[str] = []

        async def bulk() -> None:
            await emb.embed([f"{i}: {part}" for i in range(96)])  # distinct: identical texts are encoded once
            order.append("bulk")

        async with anyio.create_task_group() as tg:
            tg.start_soon(bulk)
            await anyio.sleep(0.05)  # the bulk call is in the model
            q = await emb.embed_one("which ticket tracks the rack 12 server?")
            order.append("query")
        assert order == ["query", "bulk"]
        want = ov_encoder.encode_batch(["which ticket tracks the rack 12 server?"])[0]
        assert q.shape == (384,) and float(q @ want) >= 0.9999  # the query model gives the bulk model's vectors
