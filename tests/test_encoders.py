"""Embedding backends (OpenVINO, torch): the same vectors, a cached conversion, a fallback, and
memory that moves between them. Real model, real #ubuntu and Russian texts, real stores in tmp_path."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from actors.runtime import open_memory
from config.models import Config, MemorySettings, Settings, TiersConfig
from memory.importer import import_transcript
from memory.maintenance import reindex
from providers import openvino_encoder
from providers.embedder import Embedder, load_encoder
from providers.errors import EmbeddingError
from providers.torch_encoder import TorchEncoder

pytestmark = pytest.mark.anyio

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SLICES = ("2011-05-29_19.jsonl", "2009-03-03_10.jsonl")


def ubuntu_texts() -> list[str]:
    texts: list[str] = []
    for name in SLICES:
        for line in (DATA / "ubuntu-irc" / name).read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("text", "").strip():
                texts.append(json.loads(line)["text"])
    return texts


def russian_texts(n: int = 200) -> list[str]:
    out: list[str] = []
    for path in sorted((DATA / "ru-dialogue").rglob("*.json*")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            text = row.get("text") if isinstance(row, dict) else None
            if isinstance(text, str) and text.strip():
                out.append(text)
            if len(out) >= n:
                return out
    return out


@pytest.fixture(scope="module")
def fp32_torch(st_model) -> TorchEncoder:
    return TorchEncoder(st_model, precision="fp32")


def test_every_backend_agrees_with_fp32_torch_on_every_text(ov_encoder, fp32_torch):
    texts = ubuntu_texts() + russian_texts()
    assert len(texts) > 1000
    want = fp32_torch.encode_batch(texts)
    # (torch's own bf16 batches: tests/test_embedder.py)
    for enc in (ov_encoder, openvino_encoder.OpenVINOEncoder(ov_encoder_dir(), precision="fp32")):
        got = enc.encode_batch(texts)
        assert got.dtype == np.float32 and got.shape == (len(texts), 384), enc.backend
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        cos = (got * want).sum(axis=1)
        assert float(cos.min()) >= 0.99, (enc.backend, enc.precision, texts[int(cos.argmin())])
        if enc.precision == "fp32":
            assert float(cos.min()) >= 0.9999, (enc.backend, texts[int(cos.argmin())])
        singles = np.stack([enc.encode_one(t) for t in texts[:50]])  # the query path gives the same vectors
        assert float((singles * want[:50]).sum(axis=1).min()) >= 0.99


def ov_encoder_dir() -> Path:
    return openvino_encoder.converted()


@pytest.fixture(scope="module")
def int8_encoder_():
    """The int8 precision (converted once into the session's cache, ~15 s), forced whatever the CPU."""
    return openvino_encoder.load(precision="int8")


def test_int8_vectors_agree_with_fp32_torch_on_every_text(int8_encoder_, fp32_torch):
    from providers.int8_encoder import INT8_MIN_TOKENS, Int8Encoder

    enc = int8_encoder_
    assert isinstance(enc, Int8Encoder) and enc.precision == "int8" and enc.backend == "openvino"
    texts = ubuntu_texts() + russian_texts()
    parts = [" ".join(texts[i : i + 15])[:1200] for i in range(0, 600, 15)]  # document-sized parts
    texts += parts
    want = fp32_torch.encode_batch(texts)
    got = enc.encode_batch(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(axis=1)
    assert float(cos.min()) >= 0.99, texts[int(cos.argmin())]
    long = np.array([len(enc._tokenizer.encode(t).ids) >= INT8_MIN_TOKENS for t in texts])
    assert long.sum() > 300 and float(cos[long].max()) < 0.99999  # the long ones did run in int8
    singles = np.stack([enc.encode_one(t) for t in texts[-20:]])  # the query path: the same vectors
    assert float((singles * want[-20:]).sum(axis=1).min()) >= 0.99


def test_the_automatic_precision_follows_the_cpu():
    from providers.openvino_encoder import choose_precision

    sapphire_rapids = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}
    cascade_lake = {"avx2", "avx512f", "avx512_vnni"}
    alder_lake = {"avx2", "avx_vnni"}
    epyc_avx2 = {"avx2", "fma", "f16c", "sse4_2"}  # this machine's kind: no bf16, no VNNI
    old = {"sse4_2", "avx"}
    assert choose_precision(frozenset(sapphire_rapids)) == "bf16"
    assert choose_precision(frozenset(cascade_lake)) == "int8"
    assert choose_precision(frozenset(alder_lake)) == "int8"
    assert choose_precision(frozenset(epyc_avx2)) == "fp32"
    assert choose_precision(frozenset(old)) == "fp32"
    assert choose_precision(frozenset()) == "fp32"  # flags unknown (not Linux)
    for forced in ("fp32", "bf16", "int8"):  # memory.embed_precision forces one whatever the CPU
        assert choose_precision(frozenset(sapphire_rapids), forced) == forced
        assert choose_precision(frozenset(epyc_avx2), forced) == forced


def _cached_conversions(root: Path) -> list[Path]:
    return sorted(p for p in (root / "models").iterdir() if p.is_dir() and not p.name.startswith("."))


async def test_two_data_dirs_share_one_conversion_in_the_users_cache(tmp_path, monkeypatch):
    cache = tmp_path / "user-cache"
    monkeypatch.delenv(openvino_encoder.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # platformdirs' user_cache_dir("kith") on Linux
    assert openvino_encoder.cache_root() == cache / "kith"
    cfg = Config(settings=Settings(memory=MemorySettings(embed_precision="fp32")), tiers=TiersConfig())
    before = openvino_encoder.conversions
    async with open_memory(cfg, tmp_path / "first") as memory:
        assert memory.embedder.backend == "openvino"
        v1 = await memory.embedder.embed_one("where is the backup server?")
    assert openvino_encoder.conversions == before + 1
    (made,) = _cached_conversions(cache / "kith")
    stamp = (made / "model.bin").stat().st_mtime_ns
    old_cache = tmp_path / "second" / "cache" / "models" / "all-MiniLM-L6-v2-openvino-0000000000000000"
    old_cache.mkdir(parents=True)  # a data dir of an earlier version, with a conversion of its own: ignored
    (old_cache / "manifest.json").write_text("not json", encoding="utf-8")
    async with open_memory(cfg, tmp_path / "second") as memory:
        v2 = await memory.embedder.embed_one("where is the backup server?")
    assert openvino_encoder.conversions == before + 1  # the second data dir converted nothing
    assert _cached_conversions(cache / "kith") == [made] and (made / "model.bin").stat().st_mtime_ns == stamp
    assert not (tmp_path / "first" / "cache").exists()
    assert float(v1 @ v2) > 0.99999


_CONVERT = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
from providers import openvino_encoder
enc = openvino_encoder.load(precision="fp32")
print("dim", enc.encode_one("hello").shape[0], "converted", openvino_encoder.conversions)
"""


def test_two_processes_starting_at_once_convert_once(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, openvino_encoder.CACHE_ENV: str(tmp_path / "cache")}
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", _CONVERT], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert sorted(out.split()[-1] for out, _ in outs) == ["0", "1"]  # one converted, the other waited and used it
    assert all(out.startswith("dim 384") for out, _ in outs)
    assert sum(err.count("converting all-MiniLM-L6-v2") for _, err in outs) == 1
    assert len(_cached_conversions(tmp_path / "cache")) == 1
    assert not list((tmp_path / "cache" / "models").glob(".building-*"))


def test_a_damaged_int8_conversion_is_redone(tmp_path, monkeypatch, int8_encoder_):
    import shutil as sh

    from providers.int8_encoder import INT8_FILE, Int8Encoder

    monkeypatch.setenv(openvino_encoder.CACHE_ENV, str(tmp_path / "cache"))
    good = openvino_encoder.converted(precision="int8", cache_dir=None)  # fresh cache: converted here
    (good / INT8_FILE).write_bytes(b"truncated")
    before = openvino_encoder.conversions
    enc = openvino_encoder.load(precision="int8")
    assert isinstance(enc, Int8Encoder) and openvino_encoder.conversions == before + 1
    assert enc.encode_one("still works").shape == (384,)
    sh.rmtree(tmp_path / "cache")


def test_the_conversion_is_cached_and_redone_when_the_weights_change(tmp_path, ov_encoder, monkeypatch):
    cached = openvino_encoder.converted()
    assert (cached / "model.xml").is_file() and (cached / "tokenizer.json").is_file()

    def no_export(*a, **k):
        raise AssertionError("converted again although cached")

    monkeypatch.setattr(openvino_encoder, "export", no_export)
    assert openvino_encoder.converted() == cached
    # a copy of the model elsewhere (same files, same mtimes) gets its own conversion
    model = tmp_path / "model"
    shutil.copytree(openvino_encoder.default_model_path(), model)
    monkeypatch.undo()
    monkeypatch.setenv(openvino_encoder.CACHE_ENV, str(tmp_path / "cache"))
    stale = tmp_path / "cache" / "models" / ".building-old"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))  # a conversion a kill -9 interrupted long ago
    first = openvino_encoder.converted(str(model))
    assert first.parent == tmp_path / "cache" / "models" and first.name != cached.name
    assert not list(first.parent.glob(".building-*"))  # the stale one removed, nothing half-built left
    (model / "config.json").write_text((model / "config.json").read_text() + "\n")  # the weights changed
    second = openvino_encoder.converted(str(model))
    assert second != first
    # a damaged conversion (a truncated model.bin) is converted again, not given up on
    (second / "model.bin").write_bytes(b"truncated")
    enc = openvino_encoder.load(str(model))
    assert enc.encode_one("still works").shape == (384,)


def test_openvino_that_cannot_be_used_falls_back_to_torch_with_a_warning(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache should be")
    monkeypatch.setenv(openvino_encoder.CACHE_ENV, str(blocker))
    with pytest.raises(EmbeddingError, match="cannot write the OpenVINO model cache"):
        openvino_encoder.load()
    with caplog.at_level(logging.WARNING, logger="providers.embedder"):
        enc = load_encoder("openvino")
    assert enc.backend == "torch"
    assert "OpenVINO backend unavailable" in caplog.text and "using torch" in caplog.text
    with pytest.raises(ValueError, match="openvino, torch"):
        load_encoder("onnx")
    with pytest.raises(ValueError, match="auto, fp32, bf16, int8"):
        load_encoder("openvino", precision="fp8")


async def test_the_embedder_runs_on_the_configured_backend(tmp_path, ov_encoder, st_model):
    async with Embedder(ov_encoder, max_batch=8) as emb:
        assert emb.backend == "openvino"
        texts = ubuntu_texts()[:100]
        bulk = await emb.embed(texts)  # length-grouped across calls, returned in the caller's order
        alone = np.stack([await emb.embed_one(t) for t in texts])
        assert float((bulk * alone).sum(axis=1).min()) >= 0.999
    async with Embedder(st_model) as emb:
        assert emb.backend == "torch"


def _slice(tmp_path: Path, n: int = 400) -> Path:
    lines = (DATA / "ubuntu-irc" / SLICES[0]).read_text(encoding="utf-8").splitlines()[:n]
    path = tmp_path / "slice.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


QUERIES = ("how do I fix my wireless driver", "grub does not boot after the upgrade", "which kernel version",
           "sound is not working", "install nvidia drivers", "mount a usb disk", "ubuntu 11.04 unity problems",
           "how to change the default editor")


async def _top(memory, chat_id: int) -> list[list[int]]:
    return [[h.message_id for h in (await memory.recall(chat_id, q, 5, mode="vector")).hits] for q in QUERIES]


async def test_switching_backend_then_reindex_gives_a_fresh_imports_results(tmp_path, st_model, ov_encoder):
    path = _slice(tmp_path)
    chat_id = json.loads(path.read_text().splitlines()[0])["chat_id"]
    cfg = Config(settings=Settings(memory=MemorySettings(embed_backend="torch")), tiers=TiersConfig())
    async with open_memory(cfg, tmp_path / "switched", model=st_model) as memory:  # imported on torch
        await import_transcript(memory, path)
        await memory.flush()
        on_torch = await _top(memory, chat_id)
    async with open_memory(Config(settings=Settings(), tiers=TiersConfig()), tmp_path / "switched", model=ov_encoder) as memory:
        # the same vector space: torch's memories answer OpenVINO's queries before any reindex
        before = await _top(memory, chat_id)
        assert sum(a[:3] == b[:3] for a, b in zip(before, on_torch)) >= len(QUERIES) - 1
        assert await reindex(memory) > 0
        switched = await _top(memory, chat_id)
    async with open_memory(Config(settings=Settings(), tiers=TiersConfig()), tmp_path / "fresh", model=ov_encoder) as memory:
        await import_transcript(memory, path)
        await memory.flush()
        fresh = await _top(memory, chat_id)
    assert all(len(t) == 5 for t in fresh)
    assert switched == fresh


def test_an_unknown_backend_in_the_config_names_the_choices(tmp_path):
    from config.errors import ConfigError
    from config.loader import load_config

    bad = tmp_path / "kith.yaml"
    bad.write_text("memory:\n  embed_backend: onnx\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "embed_backend" in str(err.value) and "openvino" in str(err.value)



def test_int8_that_disagrees_is_remembered_and_fp32_runs(tmp_path, monkeypatch, caplog):
    from providers import int8_encoder

    monkeypatch.setenv(openvino_encoder.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(int8_encoder, "MIN_COSINE", 1.01)  # no int8 model can agree this well
    before = openvino_encoder.conversions
    with caplog.at_level(logging.WARNING, logger="providers.openvino_encoder"):
        enc = openvino_encoder.load(precision="int8")
    assert enc.precision == "fp32" and "int8 unavailable" in caplog.text and "disagrees" in caplog.text
    converted = openvino_encoder.conversions - before  # the int8 attempt and the fp32 model of this fresh cache
    again = openvino_encoder.load(precision="int8")  # remembered: no second int8 conversion
    assert again.precision == "fp32" and openvino_encoder.conversions - before == converted
