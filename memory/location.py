"""Where vector memory lives: a local directory (the default, ``<data dir>/memory``) or an object
store URI that LanceDB speaks natively (``s3://bucket/prefix``; also ``gs://``, ``az://``).

LanceDB and Lance read and write the tables themselves, given ``uri`` and ``storage_options`` (the
object_store crate's keys: ``aws_endpoint``, ``aws_region``, ``allow_http``, …; credentials are best
left to the environment: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, or the machine's role).
The one small file Kith keeps beside them (``CURRENT``, which names the current table after a
reindex) goes through pyarrow's filesystems, configured from the same options: on an object store a
single PUT replaces it atomically, locally a temp file is renamed over it.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Location", "as_location"]

_REMOTE = ("s3://", "gs://", "gcs://", "az://", "abfs://")


class Location:
    """A local directory or an object-store prefix.

    where: a path, ``file://…``, or ``s3://bucket/prefix`` (``gs://``, ``az://``).
    storage_options: passed to LanceDB/Lance as they are (object_store keys, string values).
    raises ValueError for another URI scheme.
    """

    def __init__(self, where: str | Path, storage_options: Mapping[str, str] | None = None) -> None:
        text = str(where)
        self.storage_options = {str(k): str(v) for k, v in (storage_options or {}).items()}
        if text.startswith(_REMOTE):
            self.path: Path | None = None
            self.uri = text.rstrip("/")
        elif "://" in text and not text.startswith("file://"):
            raise ValueError(f"memory.uri must be a local path or s3://, gs://, az:// — not {text!r}")
        else:
            self.path = Path(text.removeprefix("file://"))
            self.uri = str(self.path)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def child(self, name: str) -> str:
        """The URI (or local path) of ``name`` under this location."""
        return str(self.path / name) if self.path is not None else f"{self.uri}/{name}"

    def prepare(self) -> None:
        """Create the local directory (an object store needs nothing)."""
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ the small files beside the tables

    def read_text(self, name: str) -> str | None:
        """The text of file ``name`` here, or None when there is none. Blocking."""
        if self.path is not None:
            try:
                return (self.path / name).read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
        fs, base = self._fs()
        try:
            with fs.open_input_stream(f"{base}/{name}") as f:
                return str(f.read().decode("utf-8"))
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        """Replace file ``name`` here with ``text``, atomically (a reader sees the old or the new
        text, never a part). Blocking."""
        if self.path is not None:
            tmp = self.path / f"{name}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
            return
        fs, base = self._fs()
        with fs.open_output_stream(f"{base}/{name}") as f:  # one PUT: atomic on object stores
            f.write(text.encode("utf-8"))

    def has_dir(self, name: str) -> bool:
        """Whether ``name`` (a table's directory) exists here. Blocking."""
        if self.path is not None:
            return (self.path / name).is_dir()
        import pyarrow.fs as pafs  # deferred: pyarrow.fs (~175 ms), only for a remote location

        fs, base = self._fs()
        info = fs.get_file_info(pafs.FileSelector(f"{base}/{name}", allow_not_found=True, recursive=False))
        return bool(info)

    def free_bytes(self) -> int | None:
        """Free space of the local file system (None for an object store)."""
        if self.path is None:
            return None
        try:
            return shutil.disk_usage(self.path).free
        except OSError:
            return 0

    def size_bytes(self) -> int:
        """Bytes of the local directory (0 for an object store: not listed for this)."""
        if self.path is None or not self.path.exists():
            return 0
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def _fs(self) -> tuple[Any, str]:
        """(pyarrow FileSystem, path within it) of an object-store location."""
        import pyarrow.fs as pafs  # deferred: pyarrow.fs (~175 ms), only for a remote location

        opts = self.storage_options
        if self.uri.startswith("s3://"):
            endpoint = opts.get("aws_endpoint") or opts.get("endpoint") or opts.get("aws_endpoint_url") \
                or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
            kwargs: dict[str, Any] = {}
            if endpoint:
                scheme, _, host = endpoint.partition("://")
                kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
            region = opts.get("aws_region") or opts.get("region")
            if region:
                kwargs["region"] = region
            key = opts.get("aws_access_key_id") or opts.get("access_key_id")
            secret = opts.get("aws_secret_access_key") or opts.get("secret_access_key")
            if key and secret:
                kwargs.update(access_key=key, secret_key=secret)
            return pafs.S3FileSystem(**kwargs), self.uri.removeprefix("s3://")
        fs, base = pafs.FileSystem.from_uri(self.uri)
        return fs, base


def as_location(where: Location | str | Path) -> Location:
    return where if isinstance(where, Location) else Location(where)
