"""The deployment files (compose.yaml, deploy/kith.service, Dockerfile) say what README: Deploy
promises; the image itself is tested by `make image-test` on a machine with a Docker engine."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

from config import load_config

ROOT = Path(__file__).resolve().parent.parent
DRAIN_S = load_config(ROOT / "config" / "kith.yaml").settings.actors.drain_timeout_s


def seconds(text: str) -> float:
    """``90s``, ``1m30s``, ``5min`` → seconds."""
    units = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip())
    assert parts, text
    return sum(float(n) * units[u] for n, u in parts)


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_runs_the_bot_on_a_named_volume_without_publishing_the_control_port():
    c = compose()
    kith = c["services"]["kith"]
    assert kith["build"]["context"] == "."
    assert "kith-data:/data" in kith["volumes"] and "kith-data" in c["volumes"]
    assert "ports" not in kith  # the control server stays inside the compose network
    assert kith["restart"] == "unless-stopped"
    assert kith["env_file"] == [{"path": ".env", "required": False}]
    assert "healthz" in " ".join(kith["healthcheck"]["test"])
    # SIGTERM drains the turns, then the operations: each up to drain_timeout_s
    assert seconds(kith["stop_grace_period"]) >= 2 * DRAIN_S


def test_postgres_is_a_profile_built_here_with_its_own_volume():
    c = compose()
    pg = c["services"]["postgres"]
    assert pg["profiles"] == ["postgres"]
    assert pg["build"]["dockerfile"] == "postgres.Dockerfile"
    assert (ROOT / "deploy" / pg["build"]["dockerfile"]).is_file()
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "profiles" not in c["services"]["kith"]  # the bot runs without the profile


def test_the_images_configs_load_and_point_the_control_server_and_postgres_where_compose_expects():
    plain = load_config(ROOT / "deploy" / "kith.yaml").settings
    assert (plain.control.host, plain.control.port, plain.storage.dialogue) == ("0.0.0.0", 8787, "duckdb")
    pg = load_config(ROOT / "deploy" / "kith-postgres.yaml").settings
    assert pg.storage.dialogue.startswith("postgresql://kith@postgres:5432/")
    assert "postgres" in compose()["services"]


def test_the_dockerfile_healthcheck_asks_the_configured_port():
    text = (ROOT / "Dockerfile").read_text()
    port = load_config(ROOT / "deploy" / "kith.yaml").settings.control.port
    assert f"http://127.0.0.1:{port}/healthz" in text
    assert re.search(r"^USER kith$", text, re.M) and re.search(r'^VOLUME \["/data"\]$', text, re.M)


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read_string((ROOT / "deploy" / "kith.service").read_text())
    return cp


def test_the_unit_is_a_hardened_notify_service():
    s = unit()["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["ExecStart"].split()[0].startswith("/") and s["ExecStart"].split()[1] == "run"
    assert s["Restart"] == "on-failure"
    for key, value in {"DynamicUser": "yes", "StateDirectory": "kith", "CacheDirectory": "kith", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "yes"}.items():
        assert s[key] == value, key
    assert seconds(s["TimeoutStopSec"]) >= 2 * DRAIN_S


def test_the_unit_puts_the_data_and_the_model_cache_in_the_service_directories():
    text = (ROOT / "deploy" / "kith.service").read_text()
    assert "Environment=KITH_DATA_DIR=%S/kith" in text  # %S/kith is $STATE_DIRECTORY
    assert "Environment=KITH_CACHE_DIR=%C/kith" in text  # %C/kith is $CACHE_DIRECTORY
    assert unit()["Install"]["WantedBy"] == "multi-user.target"
