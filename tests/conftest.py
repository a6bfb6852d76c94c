"""Shared pytest fixtures.

Async tests run on anyio's pytest plugin with the asyncio backend (mark them ``@pytest.mark.anyio``).
The embedding model is real (all-MiniLM-L6-v2, offline) and loaded once per session.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import atexit
import shutil
import tempfile

# the OpenVINO conversion of the embedding model (the default backend) is made once per test
# session, here, and shared by every test and every CLI subprocess (they inherit the variable)
if not os.environ.get("KITH_CACHE_DIR"):
    os.environ["KITH_CACHE_DIR"] = tempfile.mkdtemp(prefix="kith-test-cache-")
    atexit.register(shutil.rmtree, os.environ["KITH_CACHE_DIR"], True)

import pytest

from providers.embedder import Embedder, load_model


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """anyio's plugin runs every async test and fixture on asyncio (session scope, so async
    fixtures of any scope can use it)."""
    return "asyncio"


@pytest.fixture(scope="session")
def st_model():
    """The real sentence-transformers model, loaded once (~5-8 s)."""
    return load_model()


@pytest.fixture(scope="session")
def ov_encoder():
    """The real model on the OpenVINO backend (converted once into the session's cache, ~10 s)."""
    from providers.openvino_encoder import load

    return load()


@pytest.fixture
async def embedder(st_model):
    """A running micro-batching ``Embedder`` over the session's model."""
    async with Embedder(st_model) as emb:
        yield emb


@pytest.fixture(scope="session")
def pg_admin_url():
    """Admin URL of a real PostgreSQL server for this test session (``benchmarks.pg_server``):
    ``$KITH_TEST_PG_URL`` if set, else one started here in a temp dir and stopped at the end. Without
    PostgreSQL's binaries the tests that need it skip, or fail under ``KITH_REQUIRE_POSTGRES=1`` (CI)."""
    if os.environ.get("KITH_TEST_PG_URL"):
        yield os.environ["KITH_TEST_PG_URL"]
        return
    from benchmarks.pg_server import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        if os.environ.get("KITH_REQUIRE_POSTGRES"):  # .ci/run: a skipped contract would prove nothing
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_admin_url: str) -> str:
    """URL of a new, empty database of the session's PostgreSQL server (one per test)."""
    from benchmarks.pg_server import create_database

    return create_database(pg_admin_url)
