"""Where the chat features are registered: the ``Handlers`` table the actor runtime is opened with.

Each feature module handles what is its own — commands (``commands``, ``billing``, ``keys``,
``admin``), inline buttons, Telegram payments (``billing``), files and drawings (``media``), capacity
notices (``capacity``), the memory entries' background learning (``fact_learning``) — through a ``ChatContext``; this module only names them for the runtime.
"""
from __future__ import annotations

from actors.handlers import Handlers

from . import capacity, commands, credits, media
from .fact_learning import open_fact_learning
from .plugins.host import open_plugins

__all__ = ["HANDLERS"]

HANDLERS = Handlers(
    command=commands.handle_command,
    button=commands.handle_button,
    pre_checkout=credits.handle_pre_checkout,  # credit packs, then plans (billing)
    payment=credits.handle_payment,
    capacity_cleaned=capacity.on_capacity_cleaned,
    understand=media.understand,
    draw=media.draw,
    save_role=commands.save_role,
    upgrade_buttons=credits.upgrade_buttons,  # plans (/billing) and credit packs (/buy)
    open_plugins=open_plugins,
    open_background=open_fact_learning,  # memory entries learned by memory_model
)
