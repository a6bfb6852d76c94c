"""Supervisor semantics with a recording actor: order, concurrency, eviction, restarts, drain."""
from __future__ import annotations

import anyio
import pytest

from actors.errors import SupervisorClosed
from actors.events import ConfigChanged
from actors.supervisor import Supervisor
from config.models import ActorSettings
from tests.task_groups import StartFailed, first_start_fails, live_tasks

pytestmark = pytest.mark.anyio


class Recorder:
    """A ChatActor stand-in that records what it handles; crashes on request."""

    log: list = []
    starts: list = []
    crash_on: set = set()
    delay: float = 0.0

    def __init__(self, chat_id, services, outbox):
        self.chat_id = chat_id

    async def start(self):
        Recorder.starts.append(self.chat_id)

    async def run(self, inbox, on_handled):
        async for ev in inbox:
            try:
                if Recorder.delay:
                    await anyio.sleep(Recorder.delay)
                if (self.chat_id, ev.chat_id) in Recorder.crash_on:
                    Recorder.crash_on.discard((self.chat_id, ev.chat_id))
                    raise RuntimeError("boom mid-turn")
                Recorder.log.append((self.chat_id, ev.chat_id))
            finally:
                on_handled()


@pytest.fixture(autouse=True)
def _reset():
    Recorder.log, Recorder.starts, Recorder.crash_on, Recorder.delay = [], [], set(), 0.0


def settings(**kw) -> ActorSettings:
    base = dict(idle_ttl_s=60, drain_timeout_s=5, inbox_size=4, max_restarts=3, restart_window_s=60)
    base.update(kw)
    return ActorSettings(**base)


def ev(n: int) -> ConfigChanged:
    # ConfigChanged carries one int: we use it as a sequence number
    return ConfigChanged(n)


async def test_per_chat_order_is_kept_and_chats_run_concurrently():
    Recorder.delay = 0.001
    async with Supervisor(None, None, settings(), factory=Recorder) as sup:
        for i in range(50):
            await sup.tell(1, ev(i))
            await sup.tell(2, ev(100 + i))
        await sup.wait_all_idle()
    assert [n for c, n in Recorder.log if c == 1] == list(range(50))
    assert [n for c, n in Recorder.log if c == 2] == list(range(100, 150))
    # interleaved: chat 2 did not wait for chat 1 to finish
    first_two = next(i for i, (c, _) in enumerate(Recorder.log) if c == 2)
    assert first_two < 50
    assert Recorder.starts.count(1) == 1 and Recorder.starts.count(2) == 1


async def test_crash_mid_turn_restarts_and_keeps_queued_events():
    Recorder.crash_on = {(7, 3)}
    async with Supervisor(None, None, settings(inbox_size=16), factory=Recorder) as sup:
        for i in range(6):
            await sup.tell(7, ev(i))
        await sup.wait_idle(7)
        assert sup.stats.restarted == 1
    assert [n for _, n in Recorder.log] == [0, 1, 2, 4, 5]  # 3 crashed; 4 and 5 were queued and kept
    assert Recorder.starts == [7, 7]


async def test_restarts_are_bounded_per_window():
    Recorder.crash_on = {(1, 0), (1, 1), (1, 2)}
    with anyio.fail_after(10):
        async with Supervisor(None, None, settings(max_restarts=2, restart_window_s=0.3), factory=Recorder) as sup:
            for i in range(4):
                await sup.tell(1, ev(i))
            t0 = anyio.current_time()
            await sup.wait_idle(1)
            waited = anyio.current_time() - t0
    assert [n for _, n in Recorder.log] == [3]
    assert waited >= 0.2  # the third crash within the window had to wait it out


async def test_idle_actor_is_evicted_and_respawned_on_next_event():
    async with Supervisor(None, None, settings(idle_ttl_s=0.1), factory=Recorder) as sup:
        await sup.tell(5, ev(1))
        await sup.wait_idle(5)
        assert sup.active == 1
        with anyio.fail_after(3):
            while sup.active:
                await anyio.sleep(0.02)
        assert sup.stats.evicted == 1
        await sup.tell(5, ev(2))
        await sup.wait_idle(5)
    assert Recorder.starts == [5, 5]
    assert [n for _, n in Recorder.log] == [1, 2]


async def test_shutdown_drains_queued_events_then_refuses_new_ones():
    Recorder.delay = 0.01
    sup = Supervisor(None, None, settings(inbox_size=64), factory=Recorder)
    async with sup:
        for i in range(20):
            await sup.tell(9, ev(i))
    assert [n for _, n in Recorder.log] == list(range(20))
    with pytest.raises(SupervisorClosed):
        await sup.tell(9, ev(99))


async def test_full_inbox_applies_back_pressure_without_loss():
    Recorder.delay = 0.002
    async with Supervisor(None, None, settings(inbox_size=1), factory=Recorder) as sup:
        for i in range(30):
            await sup.tell(3, ev(i))
        await sup.wait_all_idle()
    assert [n for _, n in Recorder.log] == list(range(30))


async def test_drain_timeout_cancels_a_stuck_actor():
    Recorder.delay = 30
    with anyio.fail_after(5):
        async with Supervisor(None, None, settings(drain_timeout_s=0.2), factory=Recorder) as sup:
            await sup.tell(1, ev(1))
            await anyio.sleep(0.05)
    assert Recorder.log == []


async def test_a_start_that_fails_half_way_leaves_no_task_and_raises_its_own_error():
    before = live_tasks()
    sup = Supervisor(None, None, settings(), factory=Recorder)
    with first_start_fails() as error, pytest.raises(StartFailed) as raised:
        async with sup:
            pytest.fail("the body ran after a failed start")
    assert raised.value is error  # itself, not inside an ExceptionGroup
    assert live_tasks() == before  # the reaper it had started was cancelled and awaited


async def test_leaving_cancels_the_reaper_and_awaits_every_actor():
    before = live_tasks()
    async with Supervisor(None, None, settings(), factory=Recorder) as sup:
        await sup.tell(1, ev(1))
        await sup.tell(2, ev(2))
        assert {"supervisor-reaper", "chat-1", "chat-2"} <= {t.get_name() for t in live_tasks() - before}
    assert live_tasks() == before
    assert sorted(Recorder.log) == [(1, 1), (2, 2)]


def test_frozen_startup_heap_keeps_the_start_up_objects_out_of_collections_until_exit() -> None:
    import gc

    from actors.runtime import frozen_startup_heap

    start_up = [object() for _ in range(1000)]  # noqa: F841 - alive across the freeze
    with frozen_startup_heap() as frozen:
        assert frozen >= 1000 and gc.get_freeze_count() >= 1000
        cycle: list = []
        cycle.append(cycle)  # garbage made after start-up is still collected
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
