"""The runtime with every chat feature: what the transports, the operations and the CLI open."""
from __future__ import annotations

import functools

from actors import runtime

from .registry import HANDLERS

__all__ = ["HANDLERS", "open_runtime"]

open_runtime = functools.partial(runtime.open_runtime, handlers=HANDLERS)
"""``actors.runtime.open_runtime(config, data_dir, outbox, **kw)`` with the chat features (``HANDLERS``)."""
