"""Hot reload: re-read ``kith.yaml`` and ``tiers.yaml`` and apply them to a running bot.

``reload_config`` validates the files first (a broken file keeps the running config and reports
file, line and key); ``apply_config`` swaps the config the chat actors read at every use (models,
persona, recall, media patterns, allowed users…), the tiers of admission (quotas, features, plans),
and rebuilds the LLM router when ``models:`` or ``llm:`` changed (turns in flight finish on the old
one; it is closed when the bot stops). What is wired at start — ``memory:`` (stores, embedder),
``telegram:`` (rate limits, session), ``control:``, ``actors:``, ``transcription:``,
``image_models:``, and auto-cleanup — takes effect at the next start; the report says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from actors.services import Services
from config.errors import ConfigError
from config.loader import load_config
from config.models import Config
from providers.errors import ProviderError
from tiers.budget import paid_features

__all__ = ["AT_START", "LIVE", "ReloadReport", "apply_config", "reload_config"]

log = logging.getLogger(__name__)

# settings sections read at use time (applied at once) and wired at start (next start)
LIVE = ("bot", "models", "default_model", "llm", "media", "budget")
AT_START = ("memory", "telegram", "control", "actors", "transcription", "image_models")


@dataclass
class ReloadReport:
    """``ok``; ``error`` (the ConfigError's text: file, line, key) when not; which sections
    ``changed`` and were applied; which changed but apply ``at_next_start``."""

    ok: bool
    error: str = ""
    changed: list[str] = field(default_factory=list)
    at_next_start: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.ok:
            return f"reload failed, the running config is kept: {self.error}"
        if not self.changed and not self.at_next_start:
            return "reloaded: nothing changed"
        parts = [f"reloaded: applied {', '.join(self.changed) or 'nothing'}"]
        if self.at_next_start:
            parts.append(f"{', '.join(self.at_next_start)} changed too and apply at the next start")
        return "; ".join(parts)


def apply_config(services: Services, new: Config) -> ReloadReport:
    """Apply ``new`` to a running bot's ``services`` (event loop; no I/O). Returns what changed."""
    old = services.config
    changed = [k for k in LIVE if getattr(old.settings, k) != getattr(new.settings, k)]
    later = [k for k in AT_START if getattr(old.settings, k) != getattr(new.settings, k)]
    if old.tiers.model_dump(exclude={"memory"}) != new.tiers.model_dump(exclude={"memory"}):
        changed.append("tiers")
    if old.tiers.memory != new.tiers.memory:
        later.append("tiers.memory (auto-cleanup)")
    if "models" in changed or "llm" in changed:
        from providers.llm import LLM  # deferred: imports litellm (~2 s)

        llm = LLM(new.settings.models, new.settings.llm)  # raises ModelNotConfigured: nothing applied yet
        services.retired_llms.append(services.llm)
        services.llm = llm
    services.config = new
    if services.admission is not None:
        services.admission.reconfigure(new.tiers)
        if services.admission.budget is not None:
            services.admission.budget.reconfigure(new.settings.budget, new.settings.models, paid_features(new.settings))
    return ReloadReport(True, changed=changed, at_next_start=later)


def reload_config(services: Services, path: Path | None) -> ReloadReport:
    """Re-read the config (``path``: the kith.yaml the bot started with, None = the same lookup as
    at start) and apply it; a file that does not validate changes nothing. Logs the outcome."""
    try:
        new = load_config(path)
        report = apply_config(services, new)
    except (ConfigError, ProviderError) as exc:
        report = ReloadReport(False, error=str(exc))
        log.error("%s", report.summary())
        return report
    log.info("%s", report.summary())
    return report
