"""Hand-built metadata in the BPM reference format, with known expected agreements.

Values are chosen exact in binary floating point, so BPM ties are true ties:
preservation p ∈ {−0.5, −0.4375, −0.375, −0.3125, −0.25} → p_n = (p + 0.5)/0.25 ∈ {0, .25, .5, .75, 1}
(p = 0 is left out of the bounds and gets p_n = 2), edit_quality m ∈ {0.25, 0.5, 0.75} →
m_n = (m − 0.25)/0.5 ∈ {0, .5, 1}. Bounds: preservation −0.5..−0.25, edit_quality 0.25..0.75.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

P = {0.0: -0.5, 0.25: -0.4375, 0.5: -0.375, 0.75: -0.3125, 1.0: -0.25}  # p_n → p
M = {0.0: 0.25, 0.5: 0.5, 1.0: 0.75}  # m_n → m
NORMALIZATION = {"preservation_min": -0.5, "preservation_max": -0.25,
                 "edit_quality_min": 0.25, "edit_quality_max": 0.75}


def entry(p: float, m: float, human: float | None, pos: float = 1, size: float = 1, *,
          image: str = "img/x.png", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"image_path": image, "preservation": p, "edit_quality": m, "position": pos, "size": size}
    if human is not None:
        out["user_overall_quality"] = human
    out.update(extra)
    return out


def item(index: int, *entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "instruction": f"edit number {index}", "source_image_path": "img/src.png"}
    out.update({f"edited_image{k}": e for k, e in enumerate(entries, 1)})
    out.update(extra)
    return out


def alignment_items() -> list[dict[str, Any]]:
    """Three items, four candidates. Semantic S = p_n + m_n; region = position + size.

    BPM at α = 0.7 = 0.7·S + 0.3·region:
      item 0 (humans 5, 3, 1, 3): S 1.5, 1.5, 0, 1.25; region 2 → 1.65, 1.65, 0.6, 1.475
      item 1 (humans 2, 4, 4, 1): S 0.25, 1.75, 1.5, 1.0; region 2, 1, 2, 2 → 0.775, 1.525, 1.65, 1.3
      item 2 (humans 3, 3, 2, 5): S 0.5, 1.0, 1.0, 2.5 (p = 0 → p_n 2); region 2 → 0.95, 1.3, 1.3, 2.35

    Agreement at α = 0.7 (h = human order, b = BPM order; human ties skipped, BPM ties disagree):
      1-2: i0 h+ b tie ✗; i1 h− b− ✓; i2 human tie (skipped)        → 1/2
      1-3: i0 h+ b+ ✓; i1 h− b− ✓; i2 h+ b− ✗                      → 2/3
      1-4: i0 h+ b+ ✓; i1 h+ b− ✗; i2 h− b− ✓                      → 2/3
      2-3: i0 h+ b+ ✓; i1 human tie; i2 h+ b tie ✗                 → 1/2
      2-4: i0 human tie; i1 h+ b+ ✓; i2 h− b− ✓                    → 1
      3-4: i0 h− b− ✓; i1 h+ b+ ✓; i2 h− b− ✓                      → 1
      mean = (1/2 + 2/3 + 2/3 + 1/2 + 1 + 1)/6 = 13/18 ≈ 0.7222

    Ground-truth test at α = 0.7: i0 top shared by 1 and 2 (tie), i1 → 3, i2 → 4.

    LPIPS (lower is better), per item c1..c4: i0 .1 .2 .4 .3; i1 .3 .1 .2 .4; i2 .2 .2 .1 .3
      1-2: i0 ✓ (.1<.2, h+); i1 ✓ (.3>.1, h−)                     → 1
      1-3: i0 ✓; i1 ✓ (.3>.2, h−); i2 ✗ (.2>.1 but h+)            → 2/3
      1-4: i0 ✓; i1 ✓ (.3<.4, h+); i2 ✗ (.2<.3 but h−)            → 2/3
      2-3: i0 ✓ (.2<.4, h+); i2 ✗ (.2>.1, h+)                     → 1/2
      2-4: i1 ✓ (.1<.4, h+); i2 ✗ (.2<.3, h−)                     → 1/2
      3-4: i0 ✓ (.4>.3, h−); i1 ✓ (.2<.4, h+); i2 ✗ (.1<.3, h−)   → 2/3
      mean = (1 + 2/3 + 2/3 + 1/2 + 1/2 + 2/3)/6 = 2/3
      top LPIPS: i0 → 1, i1 → 2, i2 → 3 (no ties).

    user_preservation on item 0 only (c1..c4: 4, 5, 1, 4) against preservation
    (p: −.25, −.375, −.5, −.3125): 1-2 h− p+ ✗ → 0; 1-3 ✓ → 1; 1-4 human tie → None;
    2-3 ✓ → 1; 2-4 h+ p− ✗ → 0; 3-4 h− p− ✓ → 1; mean over the 5 defined = 3/5.

    α sweep: only item 1 candidate 2 has another region; for α > 0 BPM orders like S
    except pair 1-2 in item 1 (agrees iff 2.5α − 1 > 0, α > 0.4) and pair 2-4 in item 1
    (agrees iff 1.75α − 1 > 0, α > 4/7). α = 0: BPM = region = 2 everywhere but item 1
    candidate 2 (1, against the humans) → all ties or disagreements → every pair 0, mean 0.
    α ∈ {.1 … .4}: 1-2 → 0, 2-4 → 1/2, others as above → (0 + 4/3 + 1/2 + 1/2 + 1)/6 = 5/9;
    α = .5: 1-2 → 1/2 → 23/36; α ≥ .6: 13/18 (the best: α = .6, .7, .8, .9, 1).
    """
    return [
        item(0,
             entry(P[1.0], M[0.5], 5, lpips=0.1, user_preservation=4),
             entry(P[0.5], M[1.0], 3, lpips=0.2, user_preservation=5),
             entry(P[0.0], M[0.0], 1, lpips=0.4, user_preservation=1),
             entry(P[0.75], M[0.5], 3, lpips=0.3, user_preservation=4)),
        item(1,
             entry(P[0.25], M[0.0], 2, lpips=0.3),
             entry(P[0.75], M[1.0], 4, pos=0, lpips=0.1),
             entry(P[1.0], M[0.5], 4, lpips=0.2),
             entry(P[0.5], M[0.5], 1, lpips=0.4)),
        item(2,
             entry(P[0.5], M[0.0], 3, lpips=0.2),
             entry(P[1.0], M[0.0], 3, lpips=0.2),
             entry(P[0.0], M[1.0], 2, lpips=0.1),
             entry(0.0, M[0.5], 5, lpips=0.3)),
    ]


EXPECTED_PAIRS = {"1-2": 1 / 2, "1-3": 2 / 3, "1-4": 2 / 3, "2-3": 1 / 2, "2-4": 1.0, "3-4": 1.0}
EXPECTED_MEAN = 13 / 18
# The reference pairs are the same comparisons, some reversed: (4,3) = 3-4, (4,2) = 2-4, (4,1) = 1-4.
EXPECTED_REFERENCE = {"1-2": 1 / 2, "1-3": 2 / 3, "2-3": 1 / 2, "4-3": 1.0, "4-2": 1.0, "4-1": 2 / 3}
EXPECTED_LPIPS_PAIRS = {"1-2": 1.0, "1-3": 2 / 3, "1-4": 2 / 3, "2-3": 1 / 2, "2-4": 1 / 2, "3-4": 2 / 3}
EXPECTED_LPIPS_MEAN = 2 / 3
EXPECTED_PRESERVATION_CRITERION = {"1-2": 0.0, "1-3": 1.0, "1-4": None, "2-3": 1.0, "2-4": 0.0, "3-4": 1.0}


def gt_items() -> list[dict[str, Any]]:
    """Ground-truth triplets: 1 = excessively preserved, 2 = excessively modified, 3 = well edited.

    Items 0, 1: preserved p_n 1 m_n 0 (S 1), modified p_n 0 m_n 1 (S 1), well p_n .75 m_n .5
    (S 1.25) → 3 wins both. Item 2: well edited scores S .75 → the tie 1 = 2 (S 1) on top → a tie.
    BPM = 0.7·S + 0.6 (region 2 everywhere): wins {1: 0, 2: 0, 3: 2}, ties 1.
    CLIPScore (higher is better) prefers the modified one in every item: wins {2: 3}.
    """
    def triplet(i: int, well: tuple[float, float]) -> dict[str, Any]:
        return item(i,
                    entry(P[1.0], M[0.0], None, clip_score=20.0),
                    entry(P[0.0], M[1.0], None, clip_score=30.0),
                    entry(P[well[0]], M[well[1]], None, clip_score=25.0))

    # item 2's well-edited S = 0.25 + 0.5 = 0.75 < 1
    return [triplet(0, (0.75, 0.5)), triplet(1, (0.75, 0.5)), triplet(2, (0.25, 0.5))]


def global_items() -> list[dict[str, Any]]:
    """Global edits only: preservation 0 everywhere (not applicable), so no preservation
    bounds can be fitted. With explicit bounds, BPM = p_n + m_n (α = 1) orders by m:
      item 0: m .5 vs .25, humans 4 vs 2 → ✓; item 1: humans tie → skipped;
      item 2: m .75 vs .5, humans 1 vs 5 → ✗  ⇒ pair 1-2 = 1/2."""
    return [
        item(0, entry(0.0, 0.5, 4), entry(0.0, 0.25, 2)),
        item(1, entry(0.0, 0.25, 3), entry(0.0, 0.75, 3)),
        item(2, entry(0.0, 0.75, 1), entry(0.0, 0.5, 5)),
    ]


def degenerate_items() -> list[dict[str, Any]]:
    """Every edit_quality equal: its bounds cannot be fitted (max == min)."""
    return [item(0, entry(P[0.0], 0.5, 1), entry(P[1.0], 0.5, 2))]


def unrated_items() -> list[dict[str, Any]]:
    """No user_overall_quality anywhere: nothing to align with."""
    return [item(0, entry(P[0.0], M[0.0], None), entry(P[1.0], M[1.0], None))]


def with_label(items: list[dict[str, Any]], meaningless: list[str]) -> list[dict[str, Any]]:
    """Copies of ``items`` carrying a rescore label that lists ``meaningless`` keys."""
    out = copy.deepcopy(items)
    for it in out:
        it["rescore"] = {"preset": "tiny-random", "meaningless": list(meaningless)}
    return out


def write_metadata(path: Path, items: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- image sets


SIZE = (48, 40)  # (width, height), not square

# (instruction, is global) — each parses with the rules parser
INSTRUCTIONS = (
    ("Replace the bike with a bear.", False),
    ("Add a toy on the table.", False),
    ("Change the image to a cartoon style.", True),
    ("Remove the bike.", False),
)


RATINGS = {1: 2, 2: 1, 3: 5}
PUBLISHED = {1: (-0.1, 0.1), 2: (-0.3, 0.3), 3: (-0.2, 0.4)}  # (preservation, edit_quality)


def _noise(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    w, h = size
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def make_image_set(root: Path, n: int = 3, *, kinds: tuple[int, ...] | None = None, captions: bool = True,
                   corrupt: tuple[int, int] | None = None, name: str = "metadata.json") -> Path:
    """A BPM reference file with images: ``n`` items, three candidates each —
    1 = the source itself (excessively preserved, d = 0), 2 = unrelated noise (excessively
    modified), 3 = the source with a block inverted (well edited). Human ratings 2, 1, 5.
    Published sub-scores (:data:`PUBLISHED`, which rescoring must replace) order the
    candidates as the humans do: p_n 1, 0, .5 and m_n 0, 2/3, 1 → S 1, 2/3, 1.5, so BPM
    agrees on every pair. ``corrupt`` = (item, candidate): that file is not an image.
    ``kinds``: the :data:`INSTRUCTIONS` entry of each item (default: cycling through them)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    items = []
    for i in range(n):
        instruction, _ = INSTRUCTIONS[kinds[i] if kinds is not None else i % len(INSTRUCTIONS)]
        src = _noise(i)
        Image.fromarray(src).save(root / f"src/{i}.png")
        well = src.copy()
        well[10:25, 12:30] = 255 - well[10:25, 12:30]
        edits = {1: src, 2: _noise(1000 + i), 3: well}
        it: dict[str, Any] = {"index": i, "instruction": instruction, "source_image_path": f"src/{i}.png"}
        for k, arr in edits.items():
            rel = f"cand{k}/{i}.png"
            (root / f"cand{k}").mkdir(exist_ok=True)
            if corrupt == (i, k):
                (root / rel).write_bytes(b"this is not a png")
            else:
                Image.fromarray(arr).save(root / rel)
            p, m = PUBLISHED[k]
            it[f"edited_image{k}"] = {"image_path": rel, "user_overall_quality": RATINGS[k],
                                      "preservation": p, "edit_quality": m, "position": 1, "size": 1}
        if captions:
            it["source_caption"] = f"a photo number {i}"
            it["target_caption"] = f"an edited photo number {i}"
        items.append(it)
    return write_metadata(root / name, items)
