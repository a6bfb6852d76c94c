"""Admission: may this member get an answer now, from which model? (docs/design.md §7)

The chat actor asks before each LLM call and tells after it::

    admission = Admission(store, cfg.tiers, clock)           # once, shared by all chat actors
    adm = await admission.admit(chat_id, chat_type, user_id, alias)
    if not adm.allowed:
        ...reply adm.refusal (or stay silent when adm.reason == "rate"), record no usage...
    else:
        ...call the LLM with adm.alias...; store.record_usage(rec); admission.record(rec)

Only ``admit``'s first call touches the database (it loads the subscriptions and today's usage),
and the first one after the UTC day (by the injected clock) turns, which counts the new day's stored
usage; in between everything is in memory.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import i18n
from config.models import Config, Features, Quotas, StorageLimits, Tier, TiersConfig
from i18n import N_, _, ngettext
from memory.ledger import Ledger, LedgerEntry, Posting, debit_key
from memory.store import DialogueStore
from memory.types import UsageRecord

from .budget import Budget, Spend, paid_features
from .credits import payer
from .errors import UnknownTier
from .payments import apply_successful_payment
from .quotas import ANY_MODEL, QuotaDecision, QuotaTracker, RateLimiter, TodayUsage
from .resolve import effective_tier
from .subscriptions import Subscription, SubscriptionStore

__all__ = ["FEATURE_NAMES", "GROUP_TYPES", "Admission", "Admit", "ImagesAdmit", "Profile", "open_admission"]

GROUP_TYPES = frozenset({"group", "supergroup"})
FEATURE_NAMES = {  # marked for the catalog; translate where shown: _(FEATURE_NAMES[f])
    "vision": N_("Seeing images"), "documents": N_("Reading documents"), "image_generation": N_("Drawing images"),
    "voice": N_("Transcribing voice and audio"), "custom_persona": N_("A custom persona"),
    "custom_name": N_("A name of my own in a group"),
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Admit:
    """The answer of ``Admission.admit``.

    allowed: go ahead with model ``alias``. tier: the member's effective tier here.
    downgraded: ``alias`` is not the requested one (the tier may not use it, or its quota is spent and
    the tier's ``fallback_model`` is used, or the host's spending cap is reached — ``reason``
    ``"budget"`` — and a free model answers); ``note`` says why, in one sentence, for the user.
    When refused: ``refusal`` is a short polite text for the chat; ``reason`` is ``"quota"`` (with
    ``quota`` the spent one) or ``"rate"`` (the member writes faster than the tier's
    ``member_messages_per_minute``; ``retry_after`` seconds) or ``"model"`` (the tier allows no
    model at all) or ``"budget"`` (the host's spending cap is reached and no free model is configured). A refusal costs nothing: record no usage for it.
    """

    allowed: bool
    alias: str
    tier: str
    refusal: str | None = None
    downgraded: bool = False
    reason: str | None = None
    note: str | None = None
    retry_after: float | None = None
    quota: QuotaDecision | None = None
    # paid from credits (a quota is spent and the tier's when_spent is credits): who pays, ("user", id)
    # or ("chat", id), and the price of the answer in credits (per message; tokens are added after it)
    paid_by: tuple[str, int] | None = None
    price: int = 0
    overdraft: int = 0


@dataclass(frozen=True, slots=True)
class ImagesAdmit:
    """The answer of ``Admission.admit_images``. admit: the admission (refused: ``count`` 0, its
    ``refusal``; paid: ``paid_by`` and ``price`` per image). count: images that may be made (0..n).
    free: how many of them fall within ``images_per_day`` (the rest are paid)."""

    admit: Admit
    count: int
    free: int


@dataclass(frozen=True, slots=True)
class Profile:
    """A member's standing in a chat, for /profile and /usage."""

    tier: str
    user_sub: Subscription | None  # the user's own (possibly expired)
    chat_sub: Subscription | None  # this chat's (possibly expired)
    quotas: Quotas
    today: TodayUsage
    features: Features
    user_storage: StorageLimits
    chat_storage: StorageLimits


class Admission:
    """Tiers, quotas and member rate limits for the chat actors; one per process.

    store: the open dialogue store (its ``subscriptions`` and ``usage`` tables). cfg: ``config.tiers``.
    clock: the current tz-aware UTC time (inject one in tests). ``subs``, ``quotas`` and ``rate`` are
    the parts; change subscriptions in the bot only through ``subs`` (or ``apply_payment``) — it is the
    cache ``admit`` reads.
    """

    def __init__(self, store: DialogueStore, cfg: TiersConfig, clock: Callable[[], datetime] = _utc_now, *,
                 budget: Budget | None = None) -> None:
        self.store = store
        self.budget = budget  # the host's spending cap (None: no cap); paid models are not admitted over it
        self.cfg = cfg
        self.clock = clock
        self.subs = SubscriptionStore(store, cfg, clock)
        self.quotas = QuotaTracker(store, cfg, clock)
        self.rate = RateLimiter(clock)
        self.refusals: Counter[str] = Counter()  # refusals since start, by reason (rate, quota, model, feature, size, credits)
        # the credit ledger (issue #26), on stores that run plain SQL (DuckDB, PostgreSQL); None: no credits
        self.ledger: Ledger | None = Ledger(store, clock) if hasattr(store, "sql_transaction") else None  # type: ignore[arg-type]

    def reconfigure(self, cfg: TiersConfig) -> None:
        """Use re-read tiers from now on (hot reload): quotas, features, plans. Today's counters stay."""
        self.cfg = self.subs.cfg = self.quotas.cfg = cfg

    async def open(self) -> None:
        """Load subscriptions and today's usage now (else the first ``admit`` does); after the UTC day
        has turned, count the new day's stored usage (``QuotaTracker.load``). Cheap when nothing changed."""
        await self.subs.load()
        await self.quotas.load()
        if self.budget is not None:
            await self.budget.load()
        if self.ledger is not None:
            await self.ledger.open()

    # ------------------------------------------------------------ the questions

    async def tier_of(self, chat_id: int, user_id: int) -> str:
        """The effective tier of ``user_id`` in ``chat_id`` now."""
        user_sub = await self.subs.get("user", user_id)
        chat_sub = await self.subs.get("chat", chat_id)
        return effective_tier(self.cfg, user_sub, chat_sub, self.clock())

    async def admit(self, chat_id: int, chat_type: str, user_id: int, requested_alias: str, *,
                    own_key: Collection[str] = ()) -> Admit:
        """Decide whether ``user_id`` gets an answer in ``chat_id`` now, and from which model.

        Order: the member rate (groups only), the model the tier may use (``requested_alias`` if its
        ``models`` has it or ``"*"``, else its first listed model), then today's quotas for that
        model; when one is spent, the tier's ``fallback_model`` if it is set and within quota, else a
        refusal. An allowed admit counts toward the member rate; quotas count only via ``record``;
        a refusal counts in ``refusals`` by reason. ``own_key``: the aliases the member would call on
        their own (or their group's) API key (``LLM.own_key_aliases``): the host's spending cap does
        not hold them back.
        """
        adm = await self._admit(chat_id, chat_type, user_id, requested_alias, own_key)
        if not adm.allowed:
            self.refusals[adm.reason or "other"] += 1
        return adm

    async def _admit(self, chat_id: int, chat_type: str, user_id: int, requested_alias: str,
                     own_key: Collection[str] = ()) -> Admit:
        """The decision of ``admit``, not counted: the tier's, then the host's spending cap."""
        adm = await self._admit_tier(chat_id, chat_type, user_id, requested_alias)
        if adm.allowed and self.budget is not None:
            reached = self.budget.reached()
            if reached is not None and self.budget.is_paid(adm.alias) and adm.alias not in own_key:
                return self._over_budget(adm, reached)
        return adm

    def _over_budget(self, adm: Admit, reached: Spend) -> Admit:
        """The cap is reached and ``adm`` would call a paid model: the tier's fallback model when it is
        free, else the offline model, with a note saying why; a refusal when there is neither."""
        assert self.budget is not None
        t = self.cfg.tiers[adm.tier]
        free = self.budget.free_alias(t.fallback_model)
        if reached.period == "day":
            why = _("The host's daily spending limit is reached.")
            until = _("until {time} UTC", time=_hhmm(reached.resets_at))
        else:
            why = _("The host's monthly spending limit is reached.")
            day = reached.resets_at.strftime("%Y-%m-%d")
            until = _("until {date}", date=day)
        if free is None:
            return Admit(False, adm.alias, adm.tier, reason="budget",
                         refusal=why + " " + _("I can't answer {until}.", until=until))
        return Admit(True, free, adm.tier, downgraded=True, reason="budget",
                     note=why + " " + _("Answering with {model} {until}.", model=free, until=until))

    async def _admit_tier(self, chat_id: int, chat_type: str, user_id: int, requested_alias: str) -> Admit:
        """The tier's decision (rate, model, quotas, credits)."""
        await self.open()
        tier = await self.tier_of(chat_id, user_id)
        t = self.cfg.tiers[tier]

        if chat_type in GROUP_TYPES and t.member_messages_per_minute != -1:
            wait = self.rate.hit(chat_id, user_id, t.member_messages_per_minute)
            if wait is not None:
                secs = max(1, round(wait))
                per_minute = t.member_messages_per_minute
                return Admit(False, requested_alias, tier, reason="rate", retry_after=wait, refusal=ngettext(
                    "Slow down a little: here each member gets at most {n} answer a minute. Try again in {secs} s.",
                    "Slow down a little: here each member gets at most {n} answers a minute. Try again in {secs} s.",
                    per_minute, n=i18n.number(per_minute), secs=i18n.number(secs)))

        alias, note = self._model_for(t, tier, requested_alias)
        if alias is None:
            return Admit(False, requested_alias, tier, reason="model",
                         refusal=_("The {tier} tier includes no models.", tier=tier) + self._upgrade_hint(tier))

        decision = self.quotas.check(tier, chat_id, user_id, alias)
        if decision.allowed:
            return Admit(True, alias, tier, downgraded=alias != requested_alias, note=note)

        if t.spent_mode == "credits" and self.ledger is not None:
            return await self._paid(chat_id, chat_type in GROUP_TYPES, user_id, tier, t, decision,
                                    self.cfg.prices.message(alias), alias)
        fb = t.fallback_model
        if t.spent_mode == "fallback" and fb and fb != alias and self.quotas.check(tier, chat_id, user_id, fb).allowed:
            return Admit(True, fb, tier, downgraded=True, quota=decision, note=(
                _spent_text(decision, tier, alias) + " "
                + _("Answering with {model} until {time} UTC.", model=fb, time=_hhmm(decision.resets_at))))

        return Admit(False, alias, tier, reason="quota", quota=decision, refusal=self._refusal(decision, tier, alias))

    async def charge(self, adm: Admit, chat_id: int, message_id: int, user_id: int, *, tokens: int | None = None,
                     model: str | None = None, journaled: bool = False) -> Posting | None:
        """Debit the answer to ``message_id`` of ``chat_id`` that ``adm`` admitted as paid (``paid_by``);
        None when it is not paid. Once per answered message: the key is the message
        (``memory.ledger.debit_key``), so a turn handled again (a re-delivery, the repair after a
        crash) takes nothing twice. ``tokens`` None: the message's price (at delivery); a number: the
        tokens' price (``per_1k_tokens``, after the answer; its own key). A price the balance does not
        cover down to the tier's overdraft is cut to what it covers (never below the floor).
        ``journaled``: queued into the store's reserve instead of committed (``Ledger.append``; the
        turn, right after its delivery record, which guarantees the key is new)."""
        if adm.paid_by is None or self.ledger is None:
            return None
        key = debit_key(chat_id, message_id)
        if tokens is None:
            amount = adm.price
        else:
            amount, key = self.cfg.prices.tokens(tokens), key + ":tokens"
        return await self._debit(adm, key, amount, user_id=user_id, chat_id=chat_id, message_id=message_id,
                                 note=model or adm.alias, journaled=journaled)

    async def charge_extra(self, adm: Admit, key: str, *, user_id: int, chat_id: int, message_id: int | None = None,
                           units: int = 1, note: str) -> Posting | None:
        """Debit what ``admit_feature`` or ``pay_for_tool`` admitted as paid (``paid_by``): ``adm.price``
        × ``units`` (pages read, for a document), once per ``key`` (``debit:<chat>:<message>:image``…),
        cut to what the balance covers down to the overdraft. None when it is not paid."""
        if adm.paid_by is None or self.ledger is None:
            return None
        return await self._debit(adm, key, adm.price * max(0, units), user_id=user_id, chat_id=chat_id,
                                 message_id=message_id, note=note)

    async def _debit(self, adm: Admit, key: str, amount: int, *, user_id: int, chat_id: int, message_id: int | None,
                     note: str, journaled: bool = False) -> Posting | None:
        assert adm.paid_by is not None and self.ledger is not None
        if amount <= 0:
            return None
        scope, scope_id = adm.paid_by
        entry = LedgerEntry(key, scope, scope_id, "debit", -amount, user_id=user_id, chat_id=chat_id, message_id=message_id,
                            note=note)
        posting = await self.ledger.append(entry, overdraft=adm.overdraft, journaled=journaled)
        if posting.status == "insufficient":
            left = posting.balance + adm.overdraft
            if left > 0:
                posting = await self.ledger.append(replace(entry, amount=-min(amount, left)), overdraft=adm.overdraft,
                                                   journaled=journaled)
        return posting

    async def uncharge(self, adm: Admit, chat_id: int, message_id: int) -> Posting | None:
        """Give back the message's price when the answer failed (the model erred): a ``grant`` keyed by
        the message, once. None when nothing was taken."""
        if adm.paid_by is None or self.ledger is None:
            return None
        taken = await self.ledger.get(debit_key(chat_id, message_id))
        if taken is None:
            return None
        return await self.ledger.append(LedgerEntry(
            f"undo:{int(chat_id)}:{int(message_id)}", taken.scope, taken.scope_id, "grant", -taken.amount,
            chat_id=chat_id, message_id=message_id, note="failed answer"))

    def record(self, rec: UsageRecord) -> None:
        """Count a billed call against today's quotas and the host's spend (call it next to
        ``store.record_usage(rec)``)."""
        if self.budget is not None:
            self.budget.record(rec)
        self.quotas.record(rec.chat_id, rec.user_id, rec.model, rec.prompt_tokens + rec.completion_tokens, kind=rec.kind,
                           images=rec.images, seconds=rec.seconds, pages=rec.pages, ts=rec.ts)

    async def admit_feature(self, chat_id: int, user_id: int, feature: str, *, size_bytes: int | None = None,
                            images: int = 0, seconds: float = 0.0, pages: int = 0) -> Admit:
        """May ``user_id`` use ``feature`` (``vision`` | ``documents`` | ``image_generation`` | ``voice``
        | ``custom_persona`` | ``custom_name``) in ``chat_id`` now, for a file of ``size_bytes`` (checked against the
        tier's ``max_file_mb``), ``images`` to generate and ``seconds`` of audio to transcribe?

        Refused: ``reason`` ``"feature"`` (the tier lacks it; ``refusal`` names what has it and points
        to /billing), ``"size"`` (the file is over ``max_file_mb``; nothing should be downloaded) or
        ``"quota"`` (images_per_day / audio_seconds_per_day / pages_per_day spent) or ``"credits"``
        (spent, and the tier pays with credits — ``when_spent: credits`` and a price for it — but
        neither the member's nor the group's balance covers it). ``alias`` is unused ("").

        Allowed past a spent quota when the tier pays with credits: ``paid_by`` names the balance and
        ``price`` the credits (per page for ``pages``: the pages are known after reading); the caller
        debits it with ``charge_extra`` once the work is done.
        """
        adm = await self._admit_feature(chat_id, user_id, feature, size_bytes=size_bytes, images=images, seconds=seconds,
                                        pages=pages)
        if not adm.allowed:
            self.refusals[adm.reason or "other"] += 1
        return adm

    async def admit_images(self, chat_id: int, user_id: int, n: int) -> ImagesAdmit:
        """May ``user_id`` have up to ``n`` images generated (drawn, edited or varied) in ``chat_id``
        now? ``admit_feature("image_generation", images=1)`` for the first; then as many more as
        ``images_per_day`` has left (``free``) and, past it when the tier pays with credits, as many as
        a balance covers at ``prices.per_image`` each. ``count`` is how many may be made (0: refused,
        ``admit`` says why); images past the first ``free`` ones are debited with
        ``charge_extra(admit, key, units=paid images)`` (``admit.price`` is per image)."""
        first = await self.admit_feature(chat_id, user_id, "image_generation", images=1)
        if not first.allowed:
            return ImagesAdmit(first, 0, 0)
        n = max(1, n)
        if n == 1:
            return ImagesAdmit(first, 1, 0 if first.paid_by is not None else 1)
        t = self._tier(first.tier)
        price = self.cfg.prices.media(images=1)
        free = 0
        if first.paid_by is None:
            free = 1
            while free < n and self.quotas.check_media(first.tier, user_id, images=free + 1).allowed:
                free += 1
            if free == n or t.spent_mode != "credits" or self.ledger is None or price <= 0:
                return ImagesAdmit(first, free, free)
        d = first.quota or self.quotas.check_media(first.tier, user_id, images=free + 1)
        for paid in range(n - free, 0, -1):
            adm = await self._paid(chat_id, chat_id < 0, user_id, first.tier, t, d, price * paid)
            if adm.allowed:
                return ImagesAdmit(replace(adm, price=price), free + paid, free)
        return ImagesAdmit(first, max(free, 1), free)

    async def _admit_feature(self, chat_id: int, user_id: int, feature: str, *, size_bytes: int | None = None,
                             images: int = 0, seconds: float = 0.0, pages: int = 0) -> Admit:
        """The decision of ``admit_feature``, not counted."""
        await self.open()
        tier = await self.tier_of(chat_id, user_id)
        t = self.cfg.tiers[tier]
        if not getattr(t.features, feature):
            better = self.cfg.first_above(tier, lambda o: getattr(o.features, feature))
            what = _(FEATURE_NAMES[feature]) if feature in FEATURE_NAMES else feature
            refusal = _("{feature} isn't part of the {tier} tier.", feature=what, tier=tier)
            if better:
                refusal += " " + _("It comes with the {tier} tier.", tier=better)
            return Admit(False, "", tier, reason="feature", refusal=refusal + self._upgrade_hint(tier))
        if size_bytes is not None and size_bytes > t.max_file_mb * 1024 * 1024:
            return Admit(False, "", tier, reason="size", refusal=_(
                "That file is {size} MB; on the {tier} tier I take files up to {limit} MB.",
                size=i18n.number(size_bytes / 1024 / 1024, digits=1), tier=tier, limit=i18n.number(t.max_file_mb))
                + self._upgrade_hint(tier))
        if self.budget is not None and feature in self.budget.paid_features and not self.budget.allows_paid():
            reached = self.budget.reached()
            assert reached is not None
            why = _("The host's daily spending limit is reached.") if reached.period == "day" else _(
                "The host's monthly spending limit is reached.")
            when = reached.resets_at.strftime("%Y-%m-%d %H:%M")
            return Admit(False, "", tier, reason="budget", refusal=why + " " + _("Try again after {time} UTC.", time=when))
        if images or seconds or pages:
            d = self.quotas.check_media(tier, user_id, images=images, seconds=seconds, pages=pages)
            if not d.allowed:
                price = self.cfg.prices.media(images=images, seconds=seconds, pages=1 if pages else 0)
                if t.spent_mode == "credits" and self.ledger is not None and price > 0:
                    return await self._paid(chat_id, chat_id < 0, user_id, tier, t, d, price)
                return Admit(False, "", tier, reason="quota", quota=d, refusal=self._refusal(d, tier, ""))
        return Admit(True, "", tier)

    async def _paid(self, chat_id: int, in_group: bool, user_id: int, tier: str, t: Tier, d: QuotaDecision, price: int,
                    alias: str = "") -> Admit:
        """Quota ``d`` is spent and the tier pays with credits: who pays ``price`` (the member's
        balance, else — ``in_group`` — the group's), for an answer with ``alias`` or (``""``) for a
        media item or a tool call; else the refusal with what it costs and the balance."""
        assert self.ledger is not None
        who = await payer(self.ledger, chat_id, user_id, in_group, price, t.overdraft)
        if who is not None:
            return Admit(True, alias, tier, quota=d, paid_by=who, price=price, overdraft=t.overdraft)
        balance = await self.ledger.balance("user", user_id)
        if alias:
            cost = ngettext("An answer with {model} costs {price} credit and your balance is {balance}: top up with /buy.",
                            "An answer with {model} costs {price} credits and your balance is {balance}: top up with /buy.",
                            max(1, price), model=alias, price=i18n.number(max(1, price)), balance=i18n.number(balance))
        else:
            cost = ngettext("It costs {price} credit and your balance is {balance}: top up with /buy.",
                            "It costs {price} credits and your balance is {balance}: top up with /buy.",
                            price, price=i18n.number(price), balance=i18n.number(balance))
        return Admit(False, alias, tier, reason="credits", quota=d, refusal=_spent_text(d, tier, alias) + " " + cost)

    async def admit_tools(self, tier: str, user_id: int) -> QuotaDecision:
        """May the model make one more tool call for ``user_id`` at ``tier`` today
        (``tool_calls_per_day``)? When allowed, ``limit`` and ``used`` tell how many are left (limit -1:
        unlimited). Not counted in ``refusals`` (a turn without tools is not refused). raises UnknownTier."""
        await self.open()
        return self.quotas.check_tools(tier, user_id)

    async def pay_for_tool(self, chat_id: int, user_id: int, tier: str, d: QuotaDecision) -> Admit | None:
        """``tool_calls_per_day`` (``d``) is spent: the admission to pay one more call from credits
        (``per_tool_call``) when the tier pays with credits and a balance covers it; else None."""
        t = self._tier(tier)
        price = self.cfg.prices.media(tool_calls=1)
        if t.spent_mode != "credits" or self.ledger is None or price <= 0:
            return None
        adm = await self._paid(chat_id, chat_id < 0, user_id, tier, t, d, price)
        return adm if adm.allowed else None

    def tools_refusal(self, d: QuotaDecision, tier: str) -> str:
        """The sentence for a spent ``tool_calls_per_day`` (``admit_tools``): which quota, when it resets,
        and the upgrade hint when a plan sells a better tier."""
        return self._refusal(d, tier, "")

    async def profile(self, chat_id: int, user_id: int) -> Profile:
        """The member's tier, subscriptions, today's usage and limits here."""
        await self.open()
        tier = await self.tier_of(chat_id, user_id)
        t = self.cfg.tiers[tier]
        return Profile(tier, await self.subs.get("user", user_id), await self.subs.get("chat", chat_id), t.quotas,
                       self.quotas.today(chat_id, user_id), t.features, t.user, t.chat)

    async def apply_payment(self, charge_id: str, payload: str, amount: int, currency: str, user_id: int,
                            chat_id: int, *, subscription_until: datetime | None = None,
                            renewal: bool = False) -> Subscription | None:
        """``payments.apply_successful_payment`` through this object's subscription cache (use this, not
        a second ``SubscriptionStore``, or ``admit`` would not see the new subscription until a restart)."""
        return await apply_successful_payment(self.subs, self.store, charge_id, payload, amount, currency, user_id, chat_id,
                                              subscription_until=subscription_until, renewal=renewal)

    def features(self, tier: str) -> Features:
        """What ``tier`` may do (vision, documents, image generation, custom persona, voice, custom name)."""
        return self._tier(tier).features

    def storage_limits(self, tier: str) -> tuple[StorageLimits, StorageLimits]:
        """``(per user, per chat)`` storage limits of ``tier`` (-1 = unlimited)."""
        t = self._tier(tier)
        return t.user, t.chat

    def allowed_models(self, tier: str, configured: Iterable[str]) -> list[str]:
        """The aliases among ``configured`` (``settings.models``) that ``tier`` may use, for /model."""
        models = self._tier(tier).models
        return [a for a in configured if ANY_MODEL in models or a in models]

    # ------------------------------------------------------------ plumbing

    def _tier(self, tier: str) -> Tier:
        t = self.cfg.tiers.get(tier)
        if t is None:
            raise UnknownTier(f"unknown tier {tier!r}; tiers: {', '.join(self.cfg.tiers)}")
        return t

    @staticmethod
    def _model_for(t: Tier, tier: str, requested: str) -> tuple[str | None, str | None]:
        if ANY_MODEL in t.models or requested in t.models:
            return requested, None
        first = next((a for a in t.models if a != ANY_MODEL), None)
        if first is None:
            return None, None
        return first, _("The {tier} tier can't use {requested}; answering with {model}.", tier=tier, requested=requested,
                        model=first)

    def _upgrade_hint(self, tier: str) -> str:
        rank = self.cfg.rank(tier)
        if any(p.tier in self.cfg.tiers and self.cfg.rank(p.tier) > rank for p in self.cfg.plans.values()):
            return " " + _("For more, upgrade with /billing.")
        return ""

    def _refusal(self, d: QuotaDecision, tier: str, alias: str) -> str:
        assert d.resets_at is not None
        left = d.resets_at - self.clock()
        mins = max(1, int(left.total_seconds() // 60 + (1 if left.total_seconds() % 60 else 0)))
        if mins >= 60:
            when = _("{hours} h {minutes} min", hours=mins // 60, minutes=mins % 60)
        else:
            when = _("{minutes} min", minutes=mins)
        return (_spent_text(d, tier, alias) + " " + _("It resets at {time} UTC (in {when}).", time=_hhmm(d.resets_at), when=when)
                + self._upgrade_hint(tier))


def _hhmm(ts: datetime | None) -> str:
    """``00:00``: a time of day (UTC) in refusals; 24-hour in every language."""
    return "" if ts is None else f"{ts:%H:%M}"


def _spent_text(d: QuotaDecision, tier: str, alias: str) -> str:
    """One sentence: which quota is spent (in the current language)."""
    n = d.limit
    limit = i18n.number(n)
    if d.quota == "requests_per_day":
        if d.model == ANY_MODEL:
            if n == 0:
                return _("The {tier} tier includes no requests.", tier=tier)
            return ngettext("You've used today's {limit} request on the {tier} tier.",
                            "You've used all {limit} of today's requests on the {tier} tier.", n, limit=limit, tier=tier)
        if n == 0:
            return _("The {tier} tier includes no requests to {model}.", tier=tier, model=alias)
        return ngettext("You've used today's {limit} request to {model} on the {tier} tier.",
                        "You've used all {limit} of today's requests to {model} on the {tier} tier.", n,
                        limit=limit, model=alias, tier=tier)
    if d.quota == "tokens_per_day":
        return ngettext("You've used today's {limit} token on the {tier} tier.",
                        "You've used today's {limit} tokens on the {tier} tier.", n, limit=limit, tier=tier)
    if d.quota == "chat_requests_per_day":
        return ngettext("This chat has used today's {limit} request on the {tier} tier.",
                        "This chat has used all {limit} of today's requests on the {tier} tier.", n, limit=limit, tier=tier)
    if d.quota == "chat_tokens_per_day":
        return ngettext("This chat has used today's {limit} token on the {tier} tier.",
                        "This chat has used today's {limit} tokens on the {tier} tier.", n, limit=limit, tier=tier)
    if d.quota == "images_per_day":
        return ngettext("You've had today's {limit} image on the {tier} tier.",
                        "You've had all {limit} of today's images on the {tier} tier.", n, limit=limit, tier=tier)
    if d.quota == "audio_seconds_per_day":
        return _("You've used today's {minutes} min {seconds} s of transcription on the {tier} tier.",
                 minutes=n // 60, seconds=n % 60, tier=tier)
    if d.quota == "pages_per_day":
        return ngettext("You've had today's {limit} document page read on the {tier} tier.",
                        "You've had all {limit} of today's document pages read on the {tier} tier.", n, limit=limit, tier=tier)
    if d.quota == "tool_calls_per_day":
        if n == 0:
            return _("The {tier} tier includes no tool calls.", tier=tier)
        return ngettext("You've used today's {limit} tool call on the {tier} tier.",
                        "You've used all {limit} of today's tool calls on the {tier} tier.", n, limit=limit, tier=tier)
    return _("Today's quota is used up.")


async def open_admission(store: DialogueStore, config: Config, clock: Callable[[], datetime] = _utc_now) -> Admission:
    """The ``Admission`` of ``config``: its tiers, under the host's spending cap over its models
    (``Budget``, at ``admission.budget``), opened (``Admission.open``) on ``store``."""
    budget = Budget(store, config.settings.budget, config.settings.models, clock, paid_features=paid_features(config.settings))
    admission = Admission(store, config.tiers, clock=clock, budget=budget)
    await admission.open()
    return admission
