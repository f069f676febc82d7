"""Reading a ``bpm score`` manifest: samples, their edited images, and per-line failures."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from bpm_lib.io.manifest import ManifestError, iter_manifest
from bpm_lib.types import Sample, SampleScore

EDIT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class LoadedManifest:
    samples: list[Sample]
    edits: dict[str, str]
    errors: list[tuple[str, str]] = field(default_factory=list)

    def failures(self, candidate: str) -> list[SampleScore]:
        """The lines that could not even become samples, as failed samples, so they are
        counted and reported like every other failure."""
        return [SampleScore(sid, candidate, status="error", error=msg) for sid, msg in self.errors]


def load_scoring_manifest(path: Path, *, edits_dir: Path | None = None) -> LoadedManifest:
    """Samples of ``path`` with their edited images: the line's ``edited_image`` or
    ``<sample_id>.<png|jpg|jpeg|webp>`` in ``edits_dir``. Malformed lines become errors."""
    samples: list[Sample] = []
    edits: dict[str, str] = {}
    errors: list[tuple[str, str]] = []
    bad_lines: list[ManifestError] = []
    for item in iter_manifest(path, on_error="collect", allow_absolute=True):
        if isinstance(item, ManifestError):
            bad_lines.append(item)
            continue
        edited = item.edited_image
        if edits_dir is not None and not edited:
            for suffix in EDIT_SUFFIXES:
                candidate = Path(edits_dir) / f"{item.sample_id}{suffix}"
                if candidate.is_file():
                    edited = str(candidate)
                    break
        if edited:
            edits[item.sample_id] = edited
        else:
            where = f" or {edits_dir}/{item.sample_id}.png" if edits_dir else " (no --edits folder given)"
            errors.append((item.sample_id, f"no edited image: the line has no edited_image{where}"))
            continue
        samples.append(replace(item, edited_image=edited))
    # A bad line is reported under its sample id unless that id is taken (a duplicate of a
    # good line, or a second bad line with it): then under ``line-N``, so it never replaces
    # another sample's score.
    taken = {s.sample_id for s in samples} | {sid for sid, _ in errors}
    for bad in bad_lines:
        key = bad.sample_id if bad.sample_id and bad.sample_id not in taken else f"line-{bad.line}"
        taken.add(key)
        errors.append((key, f"manifest line {bad.line}: {bad.message}"))
    return LoadedManifest(samples, edits, errors)
