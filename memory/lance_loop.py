"""A private asyncio loop in a daemon thread, for lancedb's async API (``memory.vector_table``)."""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LanceLoop"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class LanceLoop:
    """A private asyncio loop in a daemon thread that runs lancedb's async API.

    lancedb's sync API is a wrapper that makes ~6 blocking round trips to its own background loop per
    query (~3 ms each search on this machine); driving the async API directly makes one round trip per
    operation and lets the two legs of a hybrid search run concurrently inside Lance.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lancedb-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it (blocking: call from a worker thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        """Cancel whatever still runs on the loop (its waiters get an error), stop it, join the thread."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=30)
        except Exception:
            log.warning("lancedb loop did not shut down cleanly", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
