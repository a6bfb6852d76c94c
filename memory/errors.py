import errno

"""Errors of the memory package. Every error raised here derives from ``MemoryStoreError``."""

__all__ = ["DiskFull", "EmbeddingModelChanged", "MemoryStoreError", "StoreLocked", "TranscriptError",
           "TranscriptLineError", "VectorStoreError", "is_disk_full"]


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


class DiskFull(MemoryStoreError):
    """A store could not write for lack of disk space (or has no room for its reserve). Intake stops
    (``DialogueStore.add`` raises it from then on for new messages); what was committed stays, what
    was accepted and not committed is kept in the dialogue store's reserve (the replies being sent
    too) and stored at the next start, which continues from there.

    path: the file or directory that could not be written. free_bytes: free space on its file system
    when the error was seen. needed_bytes: a lower bound of what to free (the queued rows, plus room
    for the database to checkpoint).
    """

    def __init__(self, path: object, free_bytes: int, needed_bytes: int, unsaved: int = 0) -> None:
        self.path, self.free_bytes, self.needed_bytes, self.unsaved = path, free_bytes, needed_bytes, unsaved
        super().__init__(
            f"no space left on the device of {path}: {_mb(free_bytes)} free, free at least {_mb(needed_bytes)} "
            "and run again (what was stored is kept; the next run continues from there)")


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, a DuckDB or a LanceDB error, or one it wraps) says the disk is full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        text = str(e).lower()
        if "no space left" in text or "disk quota exceeded" in text or "disk is full" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


class VectorStoreError(MemoryStoreError):
    """LanceDB failed (I/O, corrupt table, schema mismatch). The table can be rebuilt from DuckDB."""


class EmbeddingModelChanged(VectorStoreError):
    """The table holds another model's vectors than the embedding model in use: they cannot be
    compared. ``kith memory reindex`` re-embeds every stored message with the model in use."""

    def __init__(self, path: object, held: tuple[str, int], wanted: tuple[str, int]) -> None:
        self.held, self.wanted = held, wanted
        super().__init__(
            f"vector memory {path} holds {held[0]} embeddings ({held[1]} dimensions) but the embedding model is "
            f"{wanted[0]} ({wanted[1]} dimensions; memory.embedding_model, memory.embed_backend): run `kith memory "
            "reindex` to re-embed every stored message with it (the dialogue store is kept), or set them back")
