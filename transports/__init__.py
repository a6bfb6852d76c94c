"""Transports: how the outside world reaches the chat actors — Telegram (kurigram), the terminal
(``kith chat``), transcripts (``kith replay``) and the in-process outbox they share (``local``). Each
turns its input into ``actors.events`` and speaks through an ``actors.outbox.Outbox``."""
