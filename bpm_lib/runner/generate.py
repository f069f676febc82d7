"""The generate stage: one candidate's editor over an EvalSet → an EditSet folder.

* The editor is built (its weights loaded) once, before the first sample.
* Samples are streamed; a sample whose ``ok`` record is already in the EditSet is
  skipped, so a killed run resumes where it stopped (failed samples are tried again).
* A failure of one sample (unreadable image, missing mask, editor error) is recorded as
  an ``error`` record and the run goes on.
* Seeds: every sample gets its own seed derived from the run seed and its id
  (:func:`derive_seed`), so a sample's edit does not depend on which other samples were
  run, in which order, or whether the run was resumed.
* Mask guidance (BPM_SPEC §9, optional): the sample's edit mask (the manifest's
  ``reference_mask``, or masks passed in, e.g. from source-side localization) is dilated;
  mask-aware editors receive the dilated mask, and the output is pasted into the source
  outside it (:func:`bpm_lib.backends.editors.blend_with_mask`). The settings are recorded
  in the EditSet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bpm_lib.errors import DataError
from bpm_lib.io.editset import EditSetWriter
from bpm_lib.io.images import load_mask, load_rgb
from bpm_lib.types import Sample

if TYPE_CHECKING:
    from PIL import Image

    from bpm_lib.backends.base import Editor

log = logging.getLogger(__name__)

SEED_SCHEME = "sha256(f'{run_seed}:{sample_id}')[:8] big-endian >> 1"


def derive_seed(run_seed: int, sample_id: str) -> int:
    """The seed of one sample: the first 8 bytes of sha256 of ``f"{run_seed}:{sample_id}"``
    (UTF-8) read as a big-endian integer and shifted right by one bit, i.e. a
    non-negative 63-bit integer (valid for ``torch.Generator.manual_seed``).

    Stable across machines and Python versions, independent of the sample order, and
    different for different sample ids or run seeds.
    """
    if isinstance(run_seed, bool) or not isinstance(run_seed, int | np.integer):
        raise TypeError(f"run_seed must be an integer, got {type(run_seed).__name__}")
    if not isinstance(sample_id, str) or not sample_id:
        raise ValueError(f"sample_id must be a non-empty string, got {sample_id!r}")
    digest = hashlib.sha256(f"{int(run_seed)}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class MaskGuidance:
    """Mask guidance settings (BPM_SPEC §9). ``mask_source`` names where masks come
    from and is recorded: ``reference`` (``Sample.reference_mask``) or whatever label
    the caller gives masks it passes to :func:`generate_edits` (e.g. ``localization``)."""

    dilate_px: int = 16
    blend: bool = True
    mask_source: str = "reference"

    def __post_init__(self) -> None:
        if isinstance(self.dilate_px, bool) or not isinstance(self.dilate_px, int) or self.dilate_px < 0:
            raise ValueError(f"dilate_px must be a non-negative integer, got {self.dilate_px!r}")
        if not isinstance(self.mask_source, str) or not self.mask_source:
            raise ValueError(f"mask_source must be a non-empty string, got {self.mask_source!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EditSetSummary:
    """What one generate run did. ``skipped`` were already done (resume); ``failed``
    lists their errors in ``errors``; ``seconds_per_edit`` is the mean over this run's
    successful edits (None when there were none)."""

    candidate: str
    out_dir: str
    total: int
    edited: int
    skipped: int
    failed: int
    seconds: float
    seconds_per_edit: float | None
    errors: dict[str, str] = field(default_factory=dict)
    editor: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _local_or_bytes(path: str, root: str | os.PathLike[str] | None, what: str) -> str | bytes:
    """A sample path as something :func:`load_rgb` reads: an S3 URI is fetched, an
    absolute path is used as is, a relative one is confined to ``root``."""
    from bpm_lib.io import storage

    if storage.is_s3(path):
        return storage.read_bytes(path)
    if Path(path).is_absolute():
        return path
    if root is None:
        return path
    if storage.is_s3(str(root)):
        return storage.read_bytes(str(root).rstrip("/") + "/" + path)
    return str(storage.safe_join(root, path, what=what))


def _mask_of(
    sample: Sample,
    size: tuple[int, int],
    masks: Mapping[str, np.ndarray] | None,
    root: str | os.PathLike[str] | None,
) -> np.ndarray:
    if masks is not None:
        mask = masks.get(sample.sample_id)
        if mask is None:
            raise DataError(f"mask guidance is on but no mask was given for sample {sample.sample_id!r}")
        arr = np.asarray(mask, dtype=bool)
        if arr.shape != (size[1], size[0]):
            raise DataError(
                f"mask of sample {sample.sample_id!r} is {arr.shape[1]}x{arr.shape[0]}, "
                f"the source image {size[0]}x{size[1]}"
            )
        return arr
    if not sample.reference_mask:
        raise DataError(f"mask guidance is on but sample {sample.sample_id!r} has no reference_mask")
    what = f"reference mask of {sample.sample_id!r}"
    return load_mask(_local_or_bytes(sample.reference_mask, root, what), size=size, what=what)


def load_masks_jsonl(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Edit masks from a localization JSONL (source side): lines either as written by the
    localize stage (``{"sample_id", "status", "localization": {..., "mask": RLE}}``) or
    plain ``{"sample_id", "mask": RLE}``. Lines without a mask (failed, not found) are
    left out, so those samples fail under mask guidance instead of going unguided."""
    from bpm_lib.io.jsonl import read_jsonl
    from bpm_lib.masks import decode_rle

    out: dict[str, np.ndarray] = {}
    for rec in read_jsonl(path):
        sid = rec.get("sample_id")
        loc = rec.get("localization") if isinstance(rec.get("localization"), Mapping) else rec
        if not isinstance(sid, str) or not isinstance(loc, Mapping):
            raise DataError(f"{path}: a line without sample_id: {str(rec)[:120]}")
        if loc.get("side", "source") != "source" or not loc.get("mask"):
            continue
        try:
            out[sid] = decode_rle(loc["mask"])
        except ValueError as e:
            raise DataError(f"{path}: mask of sample {sid!r} is malformed: {e}") from e
    return out


def _progress(iterable: Iterable[Sample], enabled: bool, candidate: str) -> Iterable[Sample]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    total = len(iterable) if isinstance(iterable, Sized) else None
    return tqdm(iterable, total=total, desc=f"edit {candidate}", unit="sample", file=sys.stderr, dynamic_ncols=True)


def generate_edits(
    samples: Iterable[Sample],
    editor: Editor | str,
    out_dir: str | os.PathLike[str],
    *,
    candidate: str,
    run_seed: int = 0,
    mask_guidance: MaskGuidance | bool | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    editor_options: Mapping[str, Any] | None = None,
) -> EditSetSummary:
    """Edit every sample with ``editor`` into the EditSet folder ``out_dir``.

    ``editor`` is an :class:`~bpm_lib.backends.base.Editor` or a registered name (built
    with ``editor_options``). ``mask_guidance``: ``True`` for the defaults of
    :class:`MaskGuidance`, an instance, or ``None``/``False`` for none; ``masks`` maps
    sample ids to boolean H×W masks (default: each sample's ``reference_mask``). Relative
    sample paths are resolved against ``root``. Returns an :class:`EditSetSummary`;
    per-sample failures are in it and in the EditSet, never raised.
    """
    import bpm_lib.backends.editors  # noqa: F401  (registers the built-in editors)
    from bpm_lib.backends.base import EDITORS
    from bpm_lib.backends.editors import blend_with_mask, dilate_mask

    if isinstance(run_seed, bool) or not isinstance(run_seed, int | np.integer):
        raise TypeError(f"run_seed must be an integer, got {type(run_seed).__name__}")
    if mask_guidance is True:
        guidance: MaskGuidance | None = MaskGuidance()
    elif mask_guidance is None or mask_guidance is False:
        guidance = None
    elif isinstance(mask_guidance, MaskGuidance):
        guidance = mask_guidance
    else:
        raise TypeError(f"mask_guidance must be a MaskGuidance, a bool or None, got {type(mask_guidance).__name__}")
    if masks is not None and guidance is None:
        raise ValueError("masks were given but mask_guidance is off")

    start = time.perf_counter()
    built = EDITORS.resolve(editor, **dict(editor_options or {}))
    identity = built.identity()
    accepts_mask = bool(getattr(built, "accepts_mask", False))
    sample_settings = getattr(built, "sample_settings", None)
    settings: dict[str, Any] = {
        "run_seed": int(run_seed),
        "seed_scheme": SEED_SCHEME,
        "mask_guidance": None if guidance is None else {**guidance.to_dict(), "passed_to_editor": accepts_mask},
    }
    total = edited = skipped = 0
    errors: dict[str, str] = {}
    edit_seconds = 0.0
    seen: set[str] = set()
    with EditSetWriter(out_dir, candidate, identity, settings) as writer:
        for sample in _progress(samples, progress, candidate):
            if not isinstance(sample, Sample):
                raise TypeError(f"samples must be Sample objects, got {type(sample).__name__}")
            sid = sample.sample_id
            if sid in seen:
                log.warning("sample %r appears twice in the input; the second is ignored", sid)
                continue
            seen.add(sid)
            total += 1
            if writer.done(sid):
                skipped += 1
                continue
            seed = derive_seed(int(run_seed), sid)
            t0 = time.perf_counter()
            try:
                what = f"source image of {sid!r}"
                source: Image.Image = load_rgb(_local_or_bytes(sample.source_image, root, what), what=what)
                extra: dict[str, Any] = {}
                if guidance is not None:
                    grown = dilate_mask(_mask_of(sample, source.size, masks, root), guidance.dilate_px)
                    kwargs = {"mask": grown} if accepts_mask else {}
                    result = built.edit(sample, source, seed=seed, **kwargs)
                    if guidance.blend:
                        # Already dilated: blend with 0 extra pixels.
                        result = blend_with_mask(source, result, grown, 0)
                else:
                    result = built.edit(sample, source, seed=seed)
                if callable(sample_settings):
                    extra = dict(sample_settings(source))
            except Exception as e:  # one sample's failure must not stop the run
                seconds = time.perf_counter() - t0
                message = f"{type(e).__name__}: {e}"
                log.warning("sample %r failed: %s", sid, message)
                writer.add_error(sid, message, seed=seed, seconds=seconds)
                errors[sid] = message
                continue
            seconds = time.perf_counter() - t0
            writer.add(sid, result, seed, seconds, extra)
            edited += 1
            edit_seconds += seconds
    summary = EditSetSummary(
        candidate=candidate,
        out_dir=str(out_dir),
        total=total,
        edited=edited,
        skipped=skipped,
        failed=len(errors),
        seconds=round(time.perf_counter() - start, 4),
        seconds_per_edit=round(edit_seconds / edited, 6) if edited else None,
        errors=errors,
        editor=identity,
    )
    log.info(
        "candidate %s: %d edited, %d already done, %d failed (of %d)",
        candidate, edited, skipped, len(errors), total,
    )
    return summary
