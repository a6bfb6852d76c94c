"""Prometheus metrics of a running bot (``prometheus_client``, a registry of its own per process).

Fed two ways: every handled message's ``TurnReport`` (``observe_turn``: turns, latency, time to
first token, LLM requests, time, tokens and cost by model and tier, recall latency, errors), and,
at scrape time, the counters the runtime and the transport already keep (``attach``: actors alive /
spawned / evicted / restarted, inbox depth, refusals by reason, the indexer's queue, the embedder's
calls and their time, the dialogue store's queue and writer lag, memory rows; ``attach_transport``:
updates received, FloodWait seconds). Names follow Prometheus conventions: ``kith_`` prefix, base
units (seconds, USD), ``_total`` for counters.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from actors.services import TurnReport

__all__ = ["CONTENT_TYPE", "Metrics"]

# seconds: a turn without the LLM takes milliseconds, with a remote LLM seconds
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The bot's metrics. ``observe_turn`` is the runtime's ``on_turn`` callback (event loop, cheap);
    ``attach(runtime)`` exposes its counters; ``exposition()`` is the ``/metrics`` body (bytes)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns = Counter("kith_turns_total", "Messages handled by chat actors.", ["answered"], registry=r)
        self.turn_seconds = Histogram("kith_turn_seconds", "Answered turns: delivery to the actor → reply done.",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.overhead_seconds = Histogram("kith_turn_overhead_seconds", "Answered turns without LLM and embedding time.",
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.llm_seconds = Histogram("kith_llm_seconds", "Time in the LLM per answered turn.", ["model"],
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft_seconds = Histogram("kith_ttft_seconds", "Answered turns: delivery to the actor → the model's first token.",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.llm_requests = Counter("kith_llm_requests_total", "LLM requests of answered turns.", ["model", "tier"], registry=r)
        self.recall_seconds = Histogram("kith_recall_seconds", "Recall per answered turn (query embedding + search).",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("kith_llm_tokens_total", "LLM tokens.", ["model", "tier", "direction"], registry=r)
        self.cost = Counter("kith_llm_cost_usd_total", "LLM cost where the provider's price is known.", ["model", "tier"],
                            registry=r)
        self.errors = Counter("kith_turn_errors_total", "Answered turns that ended in an error message.", registry=r)
        self._runtime: Any = None
        self._transport: tuple[Any, Any] | None = None
        self._memory_rows: int | None = None  # read by ``refresh`` (LanceDB counts are async)
        r.register(_RuntimeCollector(self))

    def attach(self, runtime: Any) -> None:
        """Expose ``runtime``'s counters (an ``actors.runtime.Runtime``; None detaches)."""
        self._runtime = runtime

    def attach_transport(self, router_stats: Any, limiter_stats: Any) -> None:
        """Expose the Telegram transport's counters (``RouterStats``, ``LimiterStats``)."""
        self._transport = (router_stats, limiter_stats)

    async def refresh(self) -> None:
        """Read what can only be read asynchronously (vector memory rows); call before ``exposition``."""
        rt = self._runtime
        if rt is not None:
            self._memory_rows = await rt.memory.vectors.count()

    def observe_turn(self, report: TurnReport) -> None:
        self.turns.labels(answered=str(report.responded).lower()).inc()
        if not report.responded:
            return
        model, tier = report.model or "none", report.tier or "none"
        self.turn_seconds.observe(report.total_ms / 1000)
        self.overhead_seconds.observe(report.overhead_ms / 1000)
        self.recall_seconds.observe((report.embed_ms + report.search_ms) / 1000)
        if report.model is None:  # answered without the LLM (a command's reply, an image)
            return
        self.llm_requests.labels(model=model, tier=tier).inc()
        self.llm_seconds.labels(model=model).observe(report.llm_ms / 1000)
        if report.ttft_ms is not None:
            self.ttft_seconds.observe(report.ttft_ms / 1000)
        if report.prompt_tokens:
            self.tokens.labels(model=model, tier=tier, direction="prompt").inc(report.prompt_tokens)
        if report.completion_tokens:
            self.tokens.labels(model=model, tier=tier, direction="completion").inc(report.completion_tokens)
        if report.cost_usd:
            self.cost.labels(model=model, tier=tier).inc(report.cost_usd)
        if report.error:
            self.errors.inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class _RuntimeCollector(Collector):
    """Reads the runtime's own counters at scrape time (nothing to keep in sync)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        transport = self.metrics._transport
        if transport is not None:
            router, limiter = transport
            yield CounterMetricFamily("kith_updates_received", "Telegram updates received.", value=router.received)
            yield CounterMetricFamily("kith_telegram_flood_waits", "FloodWait errors from Telegram.", value=limiter.flood_waits)
            yield CounterMetricFamily("kith_telegram_flood_wait_seconds", "Seconds Telegram told the bot to wait (FloodWait).",
                                      value=limiter.flood_wait_s)
        rt = self.metrics._runtime
        if rt is None:
            return
        sup, mem = rt.supervisor, rt.memory
        yield GaugeMetricFamily("kith_actors_alive", "Chat actors running now.", value=sup.active)
        yield GaugeMetricFamily("kith_inbox_depth", "Events queued in chat actors' inboxes (handled or waiting).",
                                value=sup.inbox_depth)
        admission = rt.services.admission
        if admission is not None:
            refusals = CounterMetricFamily("kith_refusals", "Requests refused by the tiers, by reason.", labels=["reason"])
            for reason, n in sorted(admission.refusals.items()):
                refusals.add_metric([reason], n)
            yield refusals
            if admission.budget is not None:
                yield from _budget_families(admission.budget)
        for name, value, doc in (("spawned", sup.stats.spawned, "Chat actors started."),
                                 ("evicted", sup.stats.evicted, "Chat actors stopped after idling."),
                                 ("restarted", sup.stats.restarted, "Chat actors restarted after a crash."),
                                 ("inbox_overflows", sup.stats.overflowed, "Messages stored unanswered: their chat's inbox was full.")):
            yield CounterMetricFamily(f"kith_actors_{name}", doc, value=value)
        yield GaugeMetricFamily("kith_indexer_queue", "Messages waiting to be embedded.", value=mem.indexer.pending)
        yield CounterMetricFamily("kith_indexer_failed", "Messages whose embedding was given up (the gap check redoes them).",
                                  value=mem.indexer.failed)
        yield GaugeMetricFamily("kith_store_writer_queue", "Rows waiting for the dialogue store's next commit.",
                                value=mem.store.pending)
        yield CounterMetricFamily("kith_embedder_calls", "Model calls of the embedder.", value=mem.embedder.batches)
        yield SummaryMetricFamily("kith_embedder_batch_seconds", "Model calls of the embedder: count and total time.",
                                  count_value=mem.embedder.batches, sum_value=mem.embedder.busy_s)
        yield GaugeMetricFamily("kith_store_writer_lag_seconds", "Age of the oldest row not yet committed to DuckDB.",
                                value=mem.store.writer_lag_s)
        if self.metrics._memory_rows is not None:
            yield GaugeMetricFamily("kith_memory_rows", "Rows in vector memory (messages and document parts).",
                                    value=self.metrics._memory_rows)
        yield CounterMetricFamily("kith_embedder_texts", "Texts embedded.", value=mem.embedder.texts)


def _budget_families(budget: Any) -> Iterator[Any]:
    """``kith_spend_usd{period}`` (this UTC day's and month's spend, unpriced calls counted 0) and
    ``kith_budget_usd{period}`` (the host's caps; a period without a cap is left out)."""
    spend = GaugeMetricFamily("kith_spend_usd", "Spent on paid calls this UTC day / month (USD, list prices).",
                              labels=["period"])
    cap = GaugeMetricFamily("kith_budget_usd", "The host's spending cap per UTC day / month (USD).", labels=["period"])
    for period in ("day", "month"):
        sp = budget.spend(period)
        spend.add_metric([period], sp.spent_usd)
        if sp.cap_usd is not None:
            cap.add_metric([period], sp.cap_usd)
    yield spend
    yield cap
