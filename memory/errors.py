"""Errors of the memory package. Every error raised here derives from ``MemoryStoreError``."""


class MemoryStoreError(Exception):
    """Root of the memory package's errors."""


class StoreLocked(MemoryStoreError):
    """The DuckDB file is held by another process (a running bot): stop it or talk to it instead."""


class TranscriptError(MemoryStoreError):
    """A transcript or chat export could not be read as a whole (not found, not JSON, unknown shape)."""


class TranscriptLineError(MemoryStoreError):
    """One line/message of a transcript is malformed. ``line`` is 1-based; the rest of the file is still read."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason
