"""Content-addressed cache of stage outputs (folders), shared by every run on a machine.

A stage's key is a hash of its name, the code version, its settings and the digests of
its input artifacts, so an unchanged stage of an unchanged input is served from the cache
and a changed input or setting recomputes it. Entries are written to a temp folder and
renamed into place, so a killed stage never leaves a half entry. Every lookup is
appended to ``events.jsonl`` (stage, key, hit) — the record of what was recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bpm_lib import __version__

META = "_bpm.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("BPM_CACHE_DIR") or Path.home() / ".cache" / "bpm-eval")


def stage_key(stage: str, settings: Any, inputs: dict[str, str]) -> str:
    blob = json.dumps({"stage": stage, "version": __version__, "settings": settings, "inputs": inputs},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, NotADirectoryError):  # no record, or a single-file input
        return {}


def artifact_digest(folder: str | Path) -> str:
    """The digest a producing step recorded; for a foreign folder, a hash of its files."""
    meta = read_meta(folder)
    if meta.get("digest"):
        return str(meta["digest"])
    h = hashlib.sha256()
    root = Path(folder)
    if root.is_file():  # a single-file input (e.g. a bpm-json metadata file)
        st = root.stat()
        h.update(f"{root.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:24]
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _copy_into(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    # _bpm.json last, through a temp file: a copy killed half-way never looks complete.
    for item in sorted(src.iterdir(), key=lambda p: p.name == META):
        target = dst / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        elif item.name == META:
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            shutil.copy2(item, tmp)
            os.replace(tmp, target)
        else:
            shutil.copy2(item, target)


class StageCache:
    def __init__(self, root: str | Path | None = None, enabled: bool | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir() / "stages"
        # BPM_STAGE_CACHE=0 turns the cache off for a whole run (``bpm run --no-cache``).
        self.enabled = enabled if enabled is not None else os.environ.get("BPM_STAGE_CACHE", "1") != "0"

    def _entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def _event(self, stage: str, key: str, hit: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"stage": stage, "key": key, "hit": hit, "time": time.time(), "pid": os.getpid()})
        with (self.root / "events.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def restore(self, stage: str, key: str, out: Path) -> bool:
        """Copy a cached output into ``out``; False (and nothing copied) on a miss."""
        if not self.enabled:
            return False
        entry = self._entry(stage, key)
        hit = (entry / META).is_file()
        self._event(stage, key, hit)
        if hit:
            _copy_into(entry, Path(out))
        return hit

    def store(self, stage: str, key: str, out: Path) -> None:
        if not self.enabled:
            return
        entry = self._entry(stage, key)
        if (entry / META).is_file():
            return
        tmp = entry.with_name(f".{entry.name}.{uuid.uuid4().hex[:8]}")
        shutil.copytree(out, tmp)
        try:
            os.replace(tmp, entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process stored it first

    def events(self) -> Iterator[dict[str, Any]]:
        path = self.root / "events.jsonl"
        if not path.exists():
            return iter(())
        return (json.loads(line) for line in path.read_text().splitlines() if line.strip())
