"""Hot reload of kith.yaml and tiers.yaml into a running runtime, over the control server's admin
API (token in the data dir, 0600) and through `kith reload`. Real files, real stores, real model."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from config.loader import SHIPPED_SETTINGS, SHIPPED_TIERS, load_config
from config.models import ControlSettings
from features.app import open_runtime
from operations.control import TOKEN_FILE, ControlServer
from operations.health import Health
from operations.metrics import Metrics
from operations.reload import reload_config
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio


def config_dir(tmp_path: Path) -> Path:
    """A copy of the shipped kith.yaml and tiers.yaml (the bot's own files)."""
    d = tmp_path / "etc"
    d.mkdir()
    shutil.copy(SHIPPED_SETTINGS, d / "kith.yaml")
    shutil.copy(SHIPPED_TIERS, d / "tiers.yaml")
    return d


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


async def test_a_reload_applies_tiers_and_settings_and_a_broken_file_keeps_the_old_ones(tmp_path, st_model):
    etc = config_dir(tmp_path)
    cfg = load_config(etc / "kith.yaml", env={})
    async with open_runtime(cfg, tmp_path / "data", lambda m: LocalOutbox(IdAllocator(m.store.messages.max_id)), model=st_model) as rt:
        svc = rt.services
        edit(etc / "tiers.yaml", 'requests_per_day: {"*": 30}', 'requests_per_day: {"*": 99}')
        edit(etc / "kith.yaml", "  name: Kith ", "  name: Kithra ")
        edit(etc / "kith.yaml", "  recall_k: 8 ", "  recall_k: 4 ")
        report = reload_config(svc, etc / "kith.yaml")
        assert report.ok and set(report.changed) == {"tiers", "bot"} and report.at_next_start == ["memory"]
        assert svc.admission.cfg.tiers["free"].quotas.requests_per_day == {"*": 99}  # admission uses the new tiers
        assert svc.admission.quotas.cfg is svc.admission.cfg and svc.admission.subs.cfg is svc.admission.cfg
        assert svc.config.settings.bot.name == "Kithra"  # what the actors read at every use
        assert "memory changed too and apply at the next start" in report.summary()

        before = svc.llm
        edit(etc / "kith.yaml", "  concurrency: 8 ", "  concurrency: 3 ")
        report = reload_config(svc, etc / "kith.yaml")
        assert report.changed == ["llm"] and svc.llm is not before and svc.retired_llms == [before]
        assert svc.config.settings.llm.concurrency == 3  # new turns use the rebuilt router; the old one closes at exit

        edit(etc / "tiers.yaml", "      chat_requests_per_day: 300", "      chat_requests_per_day: 300\n      bogus_key: 1")
        broken = reload_config(svc, etc / "kith.yaml")
        assert not broken.ok and "tiers.yaml" in broken.error and "bogus_key" in broken.error
        assert re_line(broken.error)
        assert svc.admission.cfg.tiers["free"].quotas.requests_per_day == {"*": 99}  # the running tiers are kept
        assert broken.summary().startswith("reload failed, the running config is kept")


def re_line(text: str) -> bool:
    import re

    return re.search(r"tiers\.yaml:\d+", text) is not None


async def test_the_admin_api_needs_the_token_and_kith_reload_uses_it(tmp_path, st_model):
    etc = config_dir(tmp_path)
    data = tmp_path / "data"
    cfg = load_config(etc / "kith.yaml", env={})
    async with open_runtime(cfg, data, lambda m: LocalOutbox(IdAllocator(m.store.messages.max_id)), model=st_model) as rt:
        server = ControlServer(ControlSettings(port=0), Health(), Metrics(), token_file=data / TOKEN_FILE)
        async with server, httpx.AsyncClient(base_url=server.url) as http:
            token_file = data / TOKEN_FILE
            assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
            control = json.loads(token_file.read_text())
            token = control["token"]
            assert len(token) >= 32 and control["url"] == server.url and control["pid"] == os.getpid()
            r = await http.post("/admin/reload")
            assert r.status_code == 401
            assert (await http.post("/admin/reload", headers={"Authorization": "Bearer nope"})).status_code == 401
            r = await http.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 503  # the runtime is not attached yet
            server.reload = lambda: reload_config(rt.services, etc / "kith.yaml")
            edit(etc / "tiers.yaml", 'requests_per_day: {"*": 30}', 'requests_per_day: {"*": 31}')
            # `kith reload`, as a user runs it, finds the server and its token in the data dir's control.json
            # (a changed control port applies at the next start: the report says so)
            port = server.url.rsplit(":", 1)[1]
            edit(etc / "kith.yaml", "  port: 8787", f"  port: {port}")
            res = await anyio.to_thread.run_sync(
                lambda: CliRunner().invoke(app(), ["reload", "--data-dir", str(data), "--config", str(etc / "kith.yaml")]))
            assert res.exit_code == 0, res.output
            assert "reloaded: applied tiers" in res.output and "control changed too" in res.output
            assert rt.services.admission.cfg.tiers["free"].quotas.requests_per_day == {"*": 31}
            edit(etc / "tiers.yaml", "tiers:", "tiers: [")
            res = await anyio.to_thread.run_sync(
                lambda: CliRunner().invoke(app(), ["reload", "--data-dir", str(data), "--config", str(etc / "kith.yaml")]))
            assert res.exit_code == 1 and "the running bot keeps its config" in res.output and "tiers.yaml:" in res.output
            # the bot refuses it the same way when asked directly (e.g. SIGHUP)
            r = await http.post("/admin/reload", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 400 and "the running config is kept" in r.json()["summary"]
            assert rt.services.admission.cfg.tiers["free"].quotas.requests_per_day == {"*": 31}
        assert not token_file.exists()  # removed when the server stops
    res = CliRunner().invoke(app(), ["reload", "--data-dir", str(data)])
    assert res.exit_code == 1 and "no running bot" in res.output


def app():
    from cli import app as kith

    return kith
