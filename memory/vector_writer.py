"""Vector memory's writes: batched upserts of embedded rows, deletes, a chat moved to its supergroup.

Writes are serialised by the table's lock and keep its hot chats in step (``memory.hot``: a chat's
epoch is bumped before and after every write to it, so a load that overlapped one is discarded).
"""
from __future__ import annotations

from collections.abc import Sequence

import anyio
import numpy as np
import pyarrow as pa

from providers.language import detect, index_terms

from .vector_rows import KIND_DOCUMENT, MemoryRow, content_text, row_id, schema, utc
from .vector_table import VectorTable

__all__ = ["VectorWriter"]

ADD_CHUNK = 8192  # rows per merge_insert transaction (bounds memory on a reindex)


class VectorWriter:
    """The writes of one ``VectorTable`` (``t``)."""

    def __init__(self, table: VectorTable) -> None:
        self.t = table

    async def add(self, rows: Sequence[MemoryRow]) -> None:
        """Append ``rows`` in one batched upsert (keyed on ``id``: re-adding a key replaces the row).

        Vectors must be float32-compatible arrays of shape (dim,). Empty input is a no-op.
        raises ValueError (bad vector shape), VectorStoreError.
        """
        if not rows:
            return
        # a batch may repeat a key: the last occurrence wins (merge_insert needs unique source keys)
        unique = list({r.id: r for r in rows}.values())
        for r in unique:
            if np.size(r.vector) != self.t.dim:
                raise ValueError(f"row {r.id}: vector has {np.size(r.vector)} values, expected {self.t.dim}")
        async with self.t.write_lock:
            for i in range(0, len(unique), ADD_CHUNK):
                # build the Arrow batch in a worker thread, not on the event loop nor the lance loop
                data = await anyio.to_thread.run_sync(self._to_arrow, unique[i : i + ADD_CHUNK], limiter=self.t.limiter)
                await self.t.run(self._upsert, data)
                for r in unique[i : i + ADD_CHUNK]:
                    if r.user_name:
                        self.t.speakers_added.setdefault(int(r.chat_id), set()).add(r.user_name)

    def _to_arrow(self, rows: Sequence[MemoryRow]) -> pa.Table:
        n = len(rows)
        vecs = np.empty((n, self.t.dim), dtype=np.float32)
        for i, r in enumerate(rows):
            vecs[i] = np.asarray(r.vector, dtype=np.float32).reshape(-1)
        if not np.isfinite(vecs).all():
            raise ValueError("vectors must be finite")
        content = [content_text(r.user_name, r.text, r.date, r.source, r.page) for r in rows]
        columns = {
                "id": pa.array([r.id for r in rows], pa.string()),
                "chat_id": pa.array([int(r.chat_id) for r in rows], pa.int64()),
                "message_id": pa.array([int(r.message_id) for r in rows], pa.int64()),
                "user_id": pa.array([int(r.user_id) for r in rows], pa.int64()),
                "user_name": pa.array([r.user_name or "" for r in rows], pa.string()),
                "kind": pa.array([r.kind for r in rows], pa.string()),
                "text": pa.array([r.text for r in rows], pa.string()),
                "content": pa.array(content, pa.string()),
                "date": pa.array([utc(r.date) for r in rows], pa.timestamp("us", tz="UTC")),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), self.t.dim),
                "source": pa.array([r.source for r in rows], pa.string()),
                "page": pa.array([r.page for r in rows], pa.int32()),
                "parent": pa.array([r.parent for r in rows], pa.int64()),
        }
        if self.t.multilingual:  # (a table of the earlier format has no such column: nothing to compute)
            columns["terms"] = pa.array([index_terms(c, detect(r.text)) for c, r in zip(content, rows)], pa.string())
        return pa.table(columns, schema=schema(self.t.dim, terms=self.t.multilingual))

    async def _upsert(self, data: pa.Table) -> None:
        chats = {int(c) for c in np.unique(data.column("chat_id").to_numpy())}
        self.t.bump(chats)
        try:
            await self.t.lance_table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        except BaseException:
            for c in chats:  # unknown what was committed: read it again when next recalled
                self.t.hot.drop(c)
            raise
        else:
            self.t.hot.upsert(data)
        finally:
            self.t.bump(chats)

    async def delete(
        self, chat_id: int, *, message_ids: Sequence[int] | None = None, user_id: int | None = None
    ) -> int:
        """Delete rows of one chat and return how many were deleted.

        No selector: every row of the chat. ``message_ids``: only those messages, and the chunks of
        the documents they carried (an empty sequence deletes nothing). ``user_id``: only that
        sender's rows. Both: the intersection.
        """
        if message_ids is not None and len(message_ids) == 0:
            return 0
        where = f"chat_id = {int(chat_id)}"
        if user_id is not None:
            where += f" AND user_id = {int(user_id)}"
        async with self.t.write_lock:
            try:
                if message_ids is None:
                    return await self.t.run(self._delete, where, int(chat_id))
                ids = sorted({int(m) for m in message_ids})
                total = 0
                for i in range(0, len(ids), 1000):
                    chunk = ", ".join(map(str, ids[i : i + 1000]))
                    total += await self.t.run(
                        self._delete, f"{where} AND (message_id IN ({chunk}) OR parent IN ({chunk}))", int(chat_id))
                return total
            finally:
                self.t.forget_speakers(int(chat_id))  # a sender may be gone: read the names again

    async def move_chat(self, old: int, new: int, shift: int) -> int:
        """Re-key chat ``old``'s rows to chat ``new`` (a basic group upgraded to a supergroup): message
        ids become ``id - shift`` (``memory.types.migrated_id``), a chunk's id follows its file
        message (``- shift << 16``) and so does its ``parent``; vectors are kept, nothing is embedded
        again. Upsert first, then delete the old rows (an interruption leaves both: run again).
        Returns the rows moved."""
        async with self.t.write_lock:
            try:
                return await self.t.run(self._move_chat, int(old), int(new), int(shift))
            finally:
                for c in (old, new):
                    self.t.forget_speakers(int(c))

    async def _move_chat(self, old: int, new: int, shift: int) -> int:
        import pyarrow.compute as pc  # deferred: pyarrow.compute (~40 ms); `kith memory stats` must not

        tbl = await self.t.lance_table.query().where(f"chat_id = {old}").to_arrow()
        if not tbl.num_rows:
            return 0
        is_doc = pc.equal(tbl.column("kind"), KIND_DOCUMENT)
        mids = pc.if_else(is_doc, pc.subtract(tbl.column("message_id"), shift << 16), pc.subtract(tbl.column("message_id"), shift))
        ids = [row_id(new, k, m) for k, m in zip(tbl.column("kind").to_pylist(), mids.to_pylist(), strict=True)]
        tbl = (tbl.set_column(tbl.schema.get_field_index("chat_id"), "chat_id", pa.array([new] * tbl.num_rows, pa.int64()))
               .set_column(tbl.schema.get_field_index("message_id"), "message_id", mids)
               .set_column(tbl.schema.get_field_index("parent"), "parent", pc.subtract(tbl.column("parent"), shift))
               .set_column(tbl.schema.get_field_index("id"), "id", pa.array(ids, pa.string())))
        await self._upsert(tbl.select(schema(self.t.dim).names).cast(schema(self.t.dim)))
        return await self._delete(f"chat_id = {old}", old)

    async def _delete(self, where: str, chat_id: int) -> int:
        self.t.bump((chat_id,))
        try:
            n = int(await self.t.lance_table.count_rows(where))
            if n:
                await self.t.lance_table.delete(where)
            return n
        finally:
            self.t.hot.drop(chat_id)
            self.t.too_big.pop(chat_id, None)
            self.t.bump((chat_id,))
