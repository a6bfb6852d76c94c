"""Bring your own key: ``/key`` sets a user's (or, through a private chat, a group's) API key; a turn
uses the member's key first, the group's next, the host's last; keys are encrypted at rest, never
echoed or logged, and the message that carried one is deleted from the chat. A key goes only to its
provider's own API: a model on a server of the host's (``api_base``) gets the host's key, as a
fallback too, unless the host set ``accepts_user_keys`` on it; ``/key`` says which models use it."""
from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pytest
from cryptography.fernet import Fernet

from actors.events import CommandEvent, Incoming, Sender
from actors.runtime import open_memory
from config.models import Config, LLMSettings, ModelSpec, Settings, TiersConfig
from features.app import open_runtime
from providers.keys import CHAT, SECRET_ENV, USER, KeysUnavailable, KeyUse, KeyVault, cipher_from_env
from providers.llm import LLM, takes_user_keys
from tests.llm_server import FakeLLMServer
from tests.llm_server import llm_server as llm_server
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

CFG = Config(settings=Settings(), tiers=TiersConfig())
GROUP, ANN, BOB, ADMIN = -100777, 11, 12, 13
USER_KEY, GROUP_KEY, HOST_KEY = "sk-ann-own-key-1234", "sk-group-key-5678", "sk-host"
LOCAL_KEY_ENV, LOCAL_KEY = "KITH_TEST_LOCAL_SERVER_KEY", "sk-host-local-server"


async def test_the_vault_encrypts_prefers_the_members_key_and_deletes(tmp_path, st_model):
    cipher = cipher_from_env({SECRET_ENV: Fernet.generate_key().decode()})
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        vault = KeyVault(memory.store.keys, cipher)
        info = await vault.set(USER, ANN, "openai", USER_KEY)
        assert info.hint == "…1234" and info.provider == "openai"
        await vault.set(CHAT, GROUP, "openai", GROUP_KEY)
        await vault.set(CHAT, GROUP, "anthropic", "sk-ant-group-0000")
        assert await vault.keys_for(ANN, GROUP) == {"openai": USER_KEY, "anthropic": "sk-ant-group-0000"}
        assert await vault.keys_for(BOB, GROUP) == {"openai": GROUP_KEY, "anthropic": "sk-ant-group-0000"}
        assert await vault.keys_for(ANN, ANN) == {"openai": USER_KEY}  # a private chat has no group keys
        assert await vault.keys_for(BOB, -100999) == {}  # another group's keys never apply
        assert await vault.delete(USER, ANN, "openai") == 1
        assert await vault.keys_for(ANN, GROUP) == {"openai": GROUP_KEY, "anthropic": "sk-ant-group-0000"}
        assert await vault.delete(CHAT, GROUP) == 2 and await vault.info(CHAT, GROUP) == []
        await vault.set(USER, BOB, "openai", "sk-bob-plaintext-check")
    con = duckdb.connect(str(tmp_path / "kith.duckdb"), read_only=True)
    (token,) = con.execute("SELECT token FROM api_keys WHERE scope_id = ?", [BOB]).fetchone()
    con.close()
    assert b"sk-bob" not in bytes(token)
    assert b"sk-bob-plaintext-check" not in (tmp_path / "kith.duckdb").read_bytes()


async def test_without_a_secret_the_vault_is_off_and_a_bad_secret_is_named(tmp_path, st_model):
    assert cipher_from_env({}) is None
    with pytest.raises(KeysUnavailable, match="KITH_SECRET_KEY is not a Fernet key"):
        cipher_from_env({SECRET_ENV: "hunter2"})
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        vault = KeyVault(memory.store.keys, None)
        assert not vault.enabled and await vault.keys_for(ANN, GROUP) == {}
        with pytest.raises(KeysUnavailable, match="has not set KITH_SECRET_KEY"):
            await vault.set(USER, ANN, "openai", USER_KEY)


async def test_rotating_the_secret_keeps_stored_keys_readable(tmp_path, st_model):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    async with open_memory(CFG, tmp_path, model=st_model) as memory:
        await KeyVault(memory.store.keys, cipher_from_env({SECRET_ENV: old})).set(USER, ANN, "openai", USER_KEY)
        rotated = KeyVault(memory.store.keys, cipher_from_env({SECRET_ENV: f"{new},{old}"}))
        assert await rotated.keys_for(ANN, ANN) == {"openai": USER_KEY}
        with pytest.raises(KeysUnavailable, match="changed"):
            await KeyVault(memory.store.keys, cipher_from_env({SECRET_ENV: new})).keys_for(ANN, ANN)


def command(chat_id: int, sender: int, args: str, message_id: int, chat_type: str = "private") -> CommandEvent:
    return CommandEvent(chat_id, chat_type, message_id, Sender(sender, f"user{sender}"), "key", args, datetime.now(UTC))


async def test_key_commands_and_turns_use_the_members_then_the_groups_then_the_hosts_key(
        tmp_path, st_model, llm_server, monkeypatch, caplog):
    caplog.set_level("DEBUG")
    monkeypatch.setenv("OPENAI_API_KEY", HOST_KEY)
    monkeypatch.setenv(SECRET_ENV, Fernet.generate_key().decode())
    monkeypatch.setenv(LOCAL_KEY_ENV, LOCAL_KEY)
    settings = Settings(models={"recall": ModelSpec(model="kith/recall"),
                                "ok": ModelSpec(model="openai/ok-model", api_base=llm_server.base_url, accepts_user_keys=True),
                                "local": ModelSpec(model="openai/ok-local", api_base=llm_server.base_url,
                                                   api_key_env=LOCAL_KEY_ENV)}, default_model="ok")
    cfg = Config(settings=settings, tiers=TiersConfig())
    holder = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id), admins={(GROUP, ADMIN)})
        return holder["box"]

    def auth_of_last_request() -> str:
        return [r for r in llm_server.requests if r.path.endswith("/chat/completions")][-1].headers["authorization"]

    async def ask(rt, chat_id: int, sender: int, n: int) -> str:
        kind = "private" if chat_id > 0 else "supergroup"
        await rt.supervisor.tell(chat_id, Incoming(chat_id, kind, n, Sender(sender, f"user{sender}"), "@kith_bot hello?",
                                                   datetime.now(UTC), respond=True))
        await rt.supervisor.wait_all_idle()
        return auth_of_last_request()

    async with open_runtime(cfg, tmp_path, make, model=st_model) as rt:
        box = holder["box"]
        await rt.supervisor.tell(ANN, command(ANN, ANN, f"openai {USER_KEY}", 5))
        await rt.supervisor.tell(BOB, command(BOB, BOB, f"group {GROUP} openai sk-not-an-admin-9999", 6))
        await rt.supervisor.tell(ADMIN, command(ADMIN, ADMIN, f"group {GROUP} openai {GROUP_KEY}", 7))
        await rt.supervisor.tell(ANN, command(ANN, ANN, "anthropic sk-ant-unused", 8))
        await rt.supervisor.tell(GROUP, command(GROUP, BOB, "openai sk-posted-in-the-group-0000", 9, "supergroup"))
        await rt.supervisor.wait_all_idle()
        said = {m.chat_id: [] for m in box.sent}
        for m in box.sent:
            said[m.chat_id].append(m.text)
        assert "…1234" in said[ANN][0] and USER_KEY not in " ".join(said[ANN])
        assert "Used for: ok. Not used for: local (the host's own servers" in said[ANN][0]
        assert "Only the admins of group" in said[BOB][0]
        assert "…5678" in said[ADMIN][0]
        assert "do not use 'anthropic'" in said[ANN][1]
        assert "never set in a group" in said[GROUP][0] and "revoke" in said[GROUP][0]
        # every message that carried a key left the chat, the refused ones too
        assert set(box.deleted) == {(ANN, 5), (BOB, 6), (ADMIN, 7), (ANN, 8), (GROUP, 9)}
        assert await rt.services.keys.info(CHAT, GROUP) != [] and await rt.services.keys.info(USER, BOB) == []

        assert await ask(rt, ANN, ANN, 20) == f"Bearer {USER_KEY}"  # her own key, in private
        assert await ask(rt, GROUP, ANN, 21) == f"Bearer {USER_KEY}"  # ... and in the group
        assert await ask(rt, GROUP, BOB, 22) == f"Bearer {GROUP_KEY}"  # the group's key for Bob
        assert await ask(rt, BOB, BOB, 23) == f"Bearer {HOST_KEY}"  # the host's in Bob's private chat

        await rt.supervisor.tell(ANN, command(ANN, ANN, "", 30))
        await rt.supervisor.tell(ANN, command(ANN, ANN, "delete", 31))
        await rt.supervisor.wait_all_idle()
        listing, gone = [m.text for m in box.sent if m.chat_id == ANN][-2:]
        assert "openai: …1234" in listing and USER_KEY not in listing and gone == "Deleted your keys."
        assert "Used for: ok. Not used for: local" in listing
        assert await ask(rt, GROUP, ANN, 32) == f"Bearer {GROUP_KEY}"
    for secret in (USER_KEY, GROUP_KEY, "sk-not-an-admin-9999", "sk-posted-in-the-group-0000"):
        assert secret not in caplog.text


async def test_without_a_secret_key_the_command_says_so(tmp_path, st_model, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    holder = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    async with open_runtime(CFG, tmp_path, make, model=st_model) as rt:
        await rt.supervisor.tell(ANN, command(ANN, ANN, f"openai {USER_KEY}", 5))
        await rt.supervisor.wait_all_idle()
    assert "has not set KITH_SECRET_KEY" in holder["box"].sent[0].text


# ---------------------------------------------------------------- a key goes only to its provider


def test_the_decision_a_users_key_goes_to_the_providers_own_api_only() -> None:
    assert takes_user_keys(ModelSpec(model="openai/gpt-4o-mini"))  # OpenAI's own API
    assert takes_user_keys(ModelSpec(model="anthropic/claude-3-5-haiku-latest", api_key_env="ANTHROPIC_API_KEY"))
    assert not takes_user_keys(ModelSpec(model="openai/llama3", api_base="http://127.0.0.1:8000/v1"))  # the host's server
    assert not takes_user_keys(ModelSpec(model="ollama/llama3", api_base="http://127.0.0.1:11434"))
    assert takes_user_keys(ModelSpec(model="openai/llama3", api_base="https://llm.example/v1", accepts_user_keys=True))
    assert not takes_user_keys(ModelSpec(model="kith/recall"))  # offline: no key at all
    llm = LLM({"recall": ModelSpec(model="kith/recall"),
               "fast": ModelSpec(model="openai/gpt-4o-mini", fallbacks=("local",)),
               "local": ModelSpec(model="openai/llama3", api_base="http://127.0.0.1:9/v1", fallbacks=("recall",)),
               "smart": ModelSpec(model="openai/gpt-4o"),
               "shared": ModelSpec(model="openai/mixtral", api_base="https://llm.example/v1", accepts_user_keys=True),
               "claude": ModelSpec(model="anthropic/claude-3-5-haiku-latest")}, LLMSettings())
    assert llm.key_use("openai") == KeyUse(("fast", "smart", "shared"), ("local",))
    assert llm.key_use("anthropic") == KeyUse(("claude",), ()) and llm.key_use("mistral") == KeyUse((), ())
    # the Router a turn with Ann's key uses: her key in the deployments of OpenAI's own API (and the
    # one the host opened to users' keys), never in the host's server's, though it is fast's fallback
    router = llm._router_for({"openai": USER_KEY})
    keys = {d["model_name"]: d["litellm_params"].get("api_key") for d in router.model_list}
    assert keys["fast"] == keys["smart"] == keys["shared"] == USER_KEY
    assert USER_KEY not in (keys["local"], keys["claude"], keys["recall"])
    assert llm._router_for({"mistral": "sk-unused"}) is llm._router  # a key no model takes changes nothing
    only_local = LLM({"local": ModelSpec(model="openai/llama3", api_base="http://127.0.0.1:9/v1")}, LLMSettings())
    assert only_local.key_use("openai") == KeyUse((), ("local",))
    assert only_local._router_for({"openai": USER_KEY}) is only_local._router


def authorizations(server: FakeLLMServer) -> list[tuple[str, str]]:
    """(model, Authorization header) of each chat completion the server got, in order."""
    return [(r.model, r.headers["authorization"]) for r in server.requests if r.path.endswith("/chat/completions")]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_server_of_the_hosts_never_sees_a_users_key_asked_or_as_a_fallback(
        llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    monkeypatch.setenv(LOCAL_KEY_ENV, LOCAL_KEY)

    def model(name: str, *fallbacks: str, accepts: bool = False) -> ModelSpec:
        return ModelSpec(model=f"openai/{name}", api_base=llm_server.base_url, api_key_env=LOCAL_KEY_ENV,
                         accepts_user_keys=accepts, fallbacks=fallbacks)

    llm = LLM({"trusted": model("ok-trusted", accepts=True), "local": model("ok-local"),
               "first": model("error-first", "local", accepts=True), "mine": model("error-mine", "trusted")},
              LLMSettings(num_retries=0))
    mine = {"openai": USER_KEY}
    chunks: list[str] = []

    async def on_delta(delta: str) -> None:
        chunks.append(delta)

    extra = {"on_delta": on_delta} if stream else {}
    messages = [{"role": "user", "content": "hello?"}]
    try:
        assert (await llm.complete("trusted", messages, api_keys=mine, **extra)).model == "trusted"
        assert (await llm.complete("local", messages, api_keys=mine, **extra)).model == "local"
        assert (await llm.complete("first", messages, api_keys=mine, **extra)).model == "local"  # fell back
        assert (await llm.complete("mine", messages, api_keys=mine, **extra)).model == "trusted"
        assert (await llm.complete("trusted", messages, **extra)).model == "trusted"  # no key of Ann's: the host's
    finally:
        await llm.aclose()
    host, hers = f"Bearer {LOCAL_KEY}", f"Bearer {USER_KEY}"
    assert authorizations(llm_server) == [
        ("ok-trusted", hers),  # the host opened this server to users' keys
        ("ok-local", host),  # the host's own server: the host's key, never Ann's
        ("error-first", hers), ("ok-local", host),  # ... as a fallback of a model that took Ann's key too
        ("error-mine", host), ("ok-trusted", hers),  # a fallback that takes users' keys gets hers
        ("ok-trusted", host),
    ]


async def test_key_says_when_it_is_used_for_no_model(tmp_path, st_model, llm_server, monkeypatch) -> None:
    monkeypatch.setenv(SECRET_ENV, Fernet.generate_key().decode())
    monkeypatch.setenv(LOCAL_KEY_ENV, LOCAL_KEY)
    settings = Settings(models={"local": ModelSpec(model="openai/ok-local", api_base=llm_server.base_url,
                                                   api_key_env=LOCAL_KEY_ENV)}, default_model="local")
    holder = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    async with open_runtime(Config(settings=settings, tiers=TiersConfig()), tmp_path, make, model=st_model) as rt:
        await rt.supervisor.tell(ANN, command(ANN, ANN, f"openai {USER_KEY}", 5))
        await rt.supervisor.tell(ANN, command(ANN, ANN, "", 6))
        await rt.supervisor.tell(ANN, Incoming(ANN, "private", 7, Sender(ANN, "ann"), "hello?", datetime.now(UTC),
                                               respond=True))
        await rt.supervisor.wait_all_idle()
    saved, listing = (m.text for m in holder["box"].sent[:2])
    none = "It is used for none of this bot's models: local run on the host's own servers, which never get users' keys."
    assert "…1234" in saved and none in saved and none in listing
    assert authorizations(llm_server) == [("ok-local", f"Bearer {LOCAL_KEY}")]


async def test_over_the_hosts_spending_cap_a_member_on_their_own_key_still_gets_the_paid_model(
        tmp_path, st_model, llm_server, monkeypatch):
    """The cap guards the host's bill: a call made on a member's own key costs the host nothing, so it
    is neither held back by the cap nor counted in the host's spend (its usage row costs 0)."""
    from config.models import BudgetSettings

    monkeypatch.setenv("OPENAI_API_KEY", HOST_KEY)
    monkeypatch.setenv(SECRET_ENV, Fernet.generate_key().decode())
    settings = Settings(models={"recall": ModelSpec(model="kith/recall"),
                                "ok": ModelSpec(model="openai/gpt-4o-mini", api_base=llm_server.base_url,
                                                accepts_user_keys=True)},
                        default_model="ok", budget=BudgetSettings(daily_usd=0))
    holder = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    async with open_runtime(Config(settings=settings, tiers=TiersConfig()), tmp_path, make, model=st_model,
                            on_turn=(turns := []).append) as rt:
        await rt.supervisor.tell(ANN, command(ANN, ANN, f"openai {USER_KEY}", 5))
        for n, who in ((20, ANN), (21, BOB)):
            await rt.supervisor.tell(who, Incoming(who, "private", n, Sender(who, f"user{who}"), "hello?",
                                                   datetime.now(UTC), respond=True))
        await rt.supervisor.wait_all_idle()
        await rt.memory.flush()
        usage = {u.user_id: u for u in await rt.memory.store.usage.rows() if u.kind == "chat"}
        spent = rt.services.admission.budget.spend("day").spent_usd
    by_user = {t.message_id: t.model for t in turns if t.responded}
    assert by_user == {20: "ok", 21: "recall"}  # Ann on her key; Bob held back by the cap
    calls = [r for r in llm_server.requests if r.path.endswith("/chat/completions")]
    assert len(calls) == 1 and calls[0].headers["authorization"] == f"Bearer {USER_KEY}"
    assert usage[ANN].cost_usd == 0.0 and usage[ANN].prompt_tokens > 0 and spent == 0.0
