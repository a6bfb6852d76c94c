"""Config loader, shipped defaults and secrets — on real files in tmp_path."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pydantic
import pytest

from config import (
    Config,
    ConfigError,
    MissingSecret,
    Settings,
    TiersConfig,
    load_config,
    model_api_key,
    payment_provider_token,
    telegram_credentials,
)
from config.loader import SHIPPED_SETTINGS, SHIPPED_TIERS
from config.models import ModelSpec, TierMemory

TWO_MODELS = """\
models:
  recall: {model: kith/recall}
  fast:
    model: openai/gpt-4o-mini
default_model: fast
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path: Path, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=kw.pop("env", {}))
    return info.value


# ---------------------------------------------------------------- shipped defaults and resolution


def test_shipped_files_load_and_match_the_model_defaults():
    cfg = load_config(env={})
    assert isinstance(cfg, Config)
    assert cfg.settings == Settings()
    assert cfg.settings_file == SHIPPED_SETTINGS and cfg.tiers_file == SHIPPED_TIERS
    tiers = cfg.tiers
    assert list(tiers.tiers) == ["free", "premium", "unlimited"] and tiers.default_tier == "free"
    assert tiers.memory == TierMemory()
    assert [tiers.rank(t) for t in tiers.tiers] == [0, 1, 2]
    unlimited = tiers.tiers["unlimited"]
    limits = [*unlimited.quotas.requests_per_day.values(), unlimited.quotas.tokens_per_day, unlimited.quotas.chat_requests_per_day,
              unlimited.quotas.chat_tokens_per_day, unlimited.user.dialogue_limit, unlimited.user.memory_limit,
              unlimited.chat.dialogue_limit, unlimited.chat.memory_limit, unlimited.member_messages_per_minute]
    assert set(limits) == {-1}
    assert {p.tier for p in tiers.plans.values()} == {"premium"} and {p.currency for p in tiers.plans.values()} == {"XTR"}
    assert {"month", "year"} <= set(tiers.plans)


def test_shipped_model_examples_are_valid_when_uncommented(tmp_path):
    text = SHIPPED_SETTINGS.read_text()
    uncommented = re.sub(r"(?m)^  # (\s*[a-z_]+:.*)$", r"  \1", text)
    assert "model: ollama/llama3" in uncommented and "  # fast:" not in uncommented
    cfg = load_config(write(tmp_path, "kith.yaml", uncommented.replace("default_model: recall", "default_model: fast")), env={})
    assert set(cfg.settings.models) == {"recall", "fast", "local", "smart", "seeing"}
    assert cfg.settings.models["seeing"].vision is True
    assert cfg.settings.models["local"].api_base == "http://127.0.0.1:11434"
    assert cfg.settings.models["fast"].fallbacks == ("local", "recall")


def test_empty_file_means_all_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "kith.yaml", "# nothing here\n"), env={})
    assert cfg.settings == Settings()
    assert cfg.tiers_file == SHIPPED_TIERS
    write(tmp_path, "tiers.yaml", "")
    assert load_config(tmp_path / "kith.yaml", env={}).tiers == TiersConfig()


def test_explicit_path_beats_kith_config(tmp_path):
    a = write(tmp_path, "a/kith.yaml", "bot: {name: A}\n")
    b = write(tmp_path, "b/kith.yaml", "bot: {name: B}\n")
    assert load_config(a, env={"KITH_CONFIG": str(b)}).settings.bot.name == "A"
    assert load_config(str(a), env={"KITH_CONFIG": str(b)}).settings_file == a
    cfg = load_config(env={"KITH_CONFIG": str(b)})
    assert cfg.settings.bot.name == "B" and cfg.settings_file == b


def test_kith_config_from_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KITH_CONFIG", str(write(tmp_path, "kith.yaml", "bot: {name: Env}\n")))
    monkeypatch.delenv("KITH_MODEL", raising=False)
    assert load_config().settings.bot.name == "Env"


def test_tiers_beside_kith_yaml_then_tiers_file(tmp_path):
    kith = write(tmp_path, "kith.yaml", "")
    beside = write(tmp_path, "tiers.yaml", "tiers: {basic: {}}\ndefault_tier: basic\n")
    cfg = load_config(kith, env={})
    assert cfg.tiers_file == beside and list(cfg.tiers.tiers) == ["basic"]

    elsewhere = write(tmp_path, "etc/my-tiers.yaml", "tiers: {gold: {}}\ndefault_tier: gold\n")
    kith.write_text("tiers_file: etc/my-tiers.yaml\n")  # relative to kith.yaml's folder, not the cwd
    cfg = load_config(kith, env={})
    assert cfg.tiers_file == elsewhere and list(cfg.tiers.tiers) == ["gold"]


def test_missing_tiers_file_names_the_key(tmp_path):
    kith = write(tmp_path, "kith.yaml", "bot: {name: X}\ntiers_file: nope.yaml\n")
    err = error_of(kith)
    assert (err.file, err.line, err.key) == (str(kith), 2, "tiers_file")
    assert "nope.yaml" in str(err)


def test_missing_file(tmp_path):
    err = error_of(tmp_path / "absent.yaml")
    assert err.file == str(tmp_path / "absent.yaml") and "not found" in str(err)


# ---------------------------------------------------------------- KITH_MODEL


def test_kith_model_selects_an_alias(tmp_path):
    cfg = load_config(write(tmp_path, "kith.yaml", TWO_MODELS), env={"KITH_MODEL": "recall"})
    assert cfg.settings.default_model == "recall" and set(cfg.settings.models) == {"recall", "fast"}


def test_kith_model_registers_a_litellm_string(tmp_path):
    cfg = load_config(write(tmp_path, "kith.yaml", ""), env={"KITH_MODEL": "openai/gpt-4o-mini"})
    assert cfg.settings.default_model == "openai/gpt-4o-mini"
    assert cfg.settings.models["openai/gpt-4o-mini"] == ModelSpec(model="openai/gpt-4o-mini")
    assert "recall" in cfg.settings.models


def test_kith_model_unknown_alias(tmp_path):
    err = error_of(write(tmp_path, "kith.yaml", ""), env={"KITH_MODEL": "gpt4"})
    assert err.key == "KITH_MODEL" and "gpt4" in str(err)


# ---------------------------------------------------------------- errors name file, line and key


def test_bad_indentation_names_file_and_line(tmp_path):
    path = write(tmp_path, "kith.yaml", """\
        bot:
          name: Kith
           language: en
        """)
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 3, "bot.language")
    assert "not valid YAML" in str(err)


def test_unclosed_quote_points_where_it_opens(tmp_path):
    path = write(tmp_path, "kith.yaml", 'bot:\n  name: "Kith\n  language: en\nllm: {}\n')
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 2, "bot.name")


def test_default_tier_not_a_tier(tmp_path):
    kith = write(tmp_path, "kith.yaml", "")
    tiers = write(tmp_path, "tiers.yaml", "tiers:\n  basic: {}\n")
    err = error_of(kith)
    assert (err.file, err.line, err.key) == (str(tiers), 1, "tiers")
    assert "default_tier is 'free' (the default)" in str(err)


def test_unknown_key_names_key_and_line(tmp_path):
    path = write(tmp_path, "kith.yaml", """\
        bot:
          name: Kith
        memory:
          recent_window: 10
          recal_k: 4
        """)
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 5, "memory.recal_k")
    assert "did you mean 'recall_k'" in str(err)
    assert str(err).startswith(f"{path}:5: memory.recal_k: unknown key")


def test_wrong_type_names_key_and_line(tmp_path):
    path = write(tmp_path, "kith.yaml", """\
        models:
          recall: {model: kith/recall}
          local:
            model: ollama/llama3
            timeout_s: soon
        """)
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 5, "models.local.timeout_s")
    assert "'soon'" in str(err)


def test_first_error_in_file_order_and_count_of_others(tmp_path):
    path = write(tmp_path, "kith.yaml", """\
        telegram: {global_per_s: fast}
        bot: {name: Kith, always_on: maybe}
        llm: {concurrency: 0}
        """)
    err = error_of(path)
    assert (err.line, err.key) == (1, "telegram.global_per_s")
    assert "2 more errors" in str(err)


def test_missing_required_key_points_at_its_parent(tmp_path):
    write(tmp_path, "kith.yaml", "")
    tiers = write(tmp_path, "tiers.yaml", """\
        plans:
          month:
            tier: free
            days: 30
        """)
    err = error_of(tmp_path / "kith.yaml")
    assert (err.file, err.line, err.key) == (str(tiers), 2, "plans.month.price")


def test_negative_limit_in_tiers(tmp_path):
    kith = write(tmp_path, "kith.yaml", "")
    tiers = write(tmp_path, "tiers.yaml", """\
        tiers:
          free:
            quotas:
              requests_per_day: {"*": 10}
              tokens_per_day: -5
        """)
    err = error_of(kith)
    assert (err.file, err.line, err.key) == (str(tiers), 5, "tiers.free.quotas.tokens_per_day")
    assert "-1 (unlimited)" in str(err)


def test_negative_per_model_quota_points_at_the_alias(tmp_path):
    kith = write(tmp_path, "kith.yaml", "")
    tiers = write(tmp_path, "tiers.yaml", """\
        tiers:
          free:
            quotas:
              requests_per_day:
                "*": 10
                recall: -2
        """)
    err = error_of(kith)
    assert (err.file, err.line, err.key) == (str(tiers), 6, "tiers.free.quotas.requests_per_day.recall")


@pytest.mark.parametrize("key, yaml_text, line", [
    ("tiers.free.models[1]", "tiers:\n  free:\n    models:\n      - recall\n      - fast\n", 5),
    ("tiers.free.models[1]", "tiers:\n  free: {models: [recall, fast]}\n", 2),
    ("tiers.free.quotas.requests_per_day.fast", "tiers:\n  free:\n    quotas:\n      requests_per_day:\n        fast: 3\n", 5),
    ("tiers.free.fallback_model", "tiers:\n  free:\n    models: ['*']\n    fallback_model: fast\n", 4),
])
def test_unknown_model_alias_in_tiers(tmp_path, key, yaml_text, line):
    kith = write(tmp_path, "kith.yaml", "")
    tiers = write(tmp_path, "tiers.yaml", yaml_text)
    err = error_of(kith)
    assert (err.file, err.line, err.key) == (str(tiers), line, key)
    assert "'fast'" in str(err) and "recall" in str(err)


def test_aliases_defined_in_kith_yaml_are_accepted_by_tiers(tmp_path):
    kith = write(tmp_path, "kith.yaml", TWO_MODELS)
    write(tmp_path, "tiers.yaml", "tiers:\n  free: {models: [fast], quotas: {requests_per_day: {fast: 3}}, fallback_model: recall}\n")
    assert load_config(kith, env={}).tiers.tiers["free"].models == ("fast",)


def test_plan_for_a_missing_tier(tmp_path):
    kith = write(tmp_path, "kith.yaml", "")
    tiers = write(tmp_path, "tiers.yaml", """\
        tiers: {free: {}, premium: {}}
        plans:
          month: {tier: premium, days: 30, price: 250}
          year:
            days: 365
            tier: gold
            price: 2500
        """)
    err = error_of(kith)
    assert (err.file, err.line, err.key) == (str(tiers), 6, "plans.year.tier")
    assert "'gold'" in str(err)


def test_default_model_not_an_alias(tmp_path):
    path = write(tmp_path, "kith.yaml", TWO_MODELS.replace("default_model: fast", "default_model: smart"))
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 5, "default_model")
    assert "'smart'" in str(err) and "fast" in str(err)


def test_default_default_model_missing_from_models_points_at_models(tmp_path):
    path = write(tmp_path, "kith.yaml", "bot: {name: X}\nmodels:\n  fast: {model: openai/gpt-4o-mini}\n")
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 2, "models")


def test_unknown_fallback_alias(tmp_path):
    path = write(tmp_path, "kith.yaml", TWO_MODELS.replace("model: openai/gpt-4o-mini", "model: openai/gpt-4o-mini\n    fallbacks: [recall, local]"))
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 5, "models.fast.fallbacks[1]")


def test_duplicate_key(tmp_path):
    path = write(tmp_path, "kith.yaml", "bot:\n  name: A\n  language: en\n  name: B\n")
    err = error_of(path)
    assert (err.file, err.line, err.key) == (str(path), 4, "bot.name")


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "kith.yaml", "# comment\n- a\n- b\n")
    err = error_of(path)
    assert (err.file, err.line) == (str(path), 2) and "mapping" in str(err)


def test_yaml_is_loaded_safely(tmp_path):
    path = write(tmp_path, "kith.yaml", "bot:\n  name: !!python/object/apply:os.system ['echo pwned']\n")
    err = error_of(path)
    assert (err.file, err.line) == (str(path), 2)


def test_models_are_frozen():
    cfg = load_config(env={})
    with pytest.raises(pydantic.ValidationError):
        cfg.settings.bot.name = "Other"
    with pytest.raises(pydantic.ValidationError):
        cfg.tiers.tiers["free"].quotas.tokens_per_day = 1
    with pytest.raises(pydantic.ValidationError):
        cfg.settings = Settings()


# ---------------------------------------------------------------- secrets


GOOD = {"TELEGRAM_API_ID": "12345", "TELEGRAM_API_HASH": "abcdef0123", "TELEGRAM_BOT_TOKEN": "1:AAA"}


def test_telegram_credentials_present():
    creds = telegram_credentials(GOOD)
    assert (creds.api_id, creds.api_hash, creds.bot_token) == (12345, "abcdef0123", "1:AAA")
    assert "AAA" not in repr(creds) and "abcdef" not in repr(creds)
    with pytest.raises(AttributeError):
        creds.api_id = 1  # type: ignore[misc]


def test_telegram_credentials_name_every_missing_variable():
    with pytest.raises(MissingSecret) as info:
        telegram_credentials({"TELEGRAM_API_HASH": "abc", "TELEGRAM_BOT_TOKEN": "  "})
    assert "TELEGRAM_API_ID" in str(info.value) and "TELEGRAM_BOT_TOKEN" in str(info.value)
    assert "TELEGRAM_API_HASH" not in str(info.value)
    with pytest.raises(MissingSecret) as info:
        telegram_credentials({})
    assert info.value.key == "TELEGRAM_API_ID, TELEGRAM_API_HASH, TELEGRAM_BOT_TOKEN"


def test_telegram_credentials_bad_api_id():
    with pytest.raises(ConfigError) as info:
        telegram_credentials({**GOOD, "TELEGRAM_API_ID": "12ab"})
    assert not isinstance(info.value, MissingSecret)
    assert info.value.key == "TELEGRAM_API_ID" and "whole number" in str(info.value)


def test_payment_token_and_model_keys():
    assert payment_provider_token({}) is None
    assert payment_provider_token({"TELEGRAM_PAYMENT_PROVIDER_TOKEN": "tok"}) == "tok"
    assert model_api_key(ModelSpec(model="openai/gpt-4o-mini"), {}) is None
    spec = ModelSpec(model="openai/gpt-4o-mini", api_key_env="MY_KEY")
    assert model_api_key(spec, {"MY_KEY": "sk-1"}) == "sk-1"
    with pytest.raises(MissingSecret) as info:
        model_api_key(spec, {})
    assert info.value.key == "MY_KEY"
