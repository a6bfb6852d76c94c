"""The operating side of a running Kith: the operations a self-hoster runs on a data dir (import,
memory, subscriptions, usage, doctor) and the ``kith run`` application around the Telegram transport:
its control server (health, readiness, Prometheus metrics, the admin API), the remote client the CLI
uses while a bot runs, and config reload."""
