"""The bundled demo set: 12 synthetic scenes drawn by code (no binary blobs).

Each 256×256 scene is a sky/grass gradient with simple objects (ball, box, tree, sun,
house, car) and one instruction; the edit types cover replace, add (with an anchor and a
spatial phrase), remove, change color, change texture, change size and two global
edits. Every sample has a reference mask (the changed region: the union of the changed
objects before and after the edit; everything for global edits) and three candidates,
written as precomputed EditSets under ``candidates/<name>/``:

* ``well_edited``    the instructed change, only inside the reference mask;
* ``over_preserved`` an unchanged copy of the source;
* ``over_modified``  the change plus a strong alteration of the whole image
  (colour shift, blur and noise).

Everything is deterministic: the same code writes byte-identical PNGs on every run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bpm_lib.io.datasets import CandidateData, ImageRef, RecordData, SkippedRecord, SourceRecord
from bpm_lib.io.manifest import EvalSetInfo

SIZE = 256
HORIZON = 160
DEMO_CANDIDATES = ("well_edited", "over_preserved", "over_modified")
CANDIDATE_DESCRIPTIONS = {
    "well_edited": "the instructed change, only inside the edit region (demo ground truth: best)",
    "over_preserved": "an unchanged copy of the source image (excessively preserved)",
    "over_modified": "the instructed change plus a strong global alteration: colour shift, blur, noise "
                     "(excessively modified)",
}

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Shape:
    """One object of a scene: ``kind`` in ball/box/tree/sun/house/car, a bounding box and a colour."""

    kind: str
    box: tuple[int, int, int, int]
    color: RGB
    texture: str | None = None


def _background() -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), dtype=np.float64)
    sky_t = np.linspace(0.0, 1.0, HORIZON)[:, None]
    img[:HORIZON] = (np.array([70, 130, 210]) * (1 - sky_t) + np.array([190, 220, 245]) * sky_t)[:, None, :]
    grass_t = np.linspace(0.0, 1.0, SIZE - HORIZON)[:, None]
    img[HORIZON:] = (np.array([110, 190, 80]) * (1 - grass_t) + np.array([50, 120, 40]) * grass_t)[:, None, :]
    return np.rint(img).astype(np.uint8)


def _darker(color: RGB, factor: float = 0.6) -> RGB:
    return (int(color[0] * factor), int(color[1] * factor), int(color[2] * factor))


def _draw_shape(img: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, shape: Shape) -> None:
    x0, y0, x1, y1 = shape.box
    c = shape.color
    if shape.kind in ("ball", "sun"):
        img.ellipse(shape.box, fill=c, outline=_darker(c))
        mask.ellipse(shape.box, fill=255)
        if shape.kind == "ball":  # a highlight so the ball reads as round
            r = (x1 - x0) // 5
            img.ellipse((x0 + r, y0 + r, x0 + 2 * r, y0 + 2 * r), fill=(255, 255, 255))
    elif shape.kind == "box":
        img.rectangle(shape.box, fill=c, outline=_darker(c), width=2)
        mask.rectangle(shape.box, fill=255)
        if shape.texture == "stripes":
            step = 6
            for x in range(x0 + 2, x1 - 1, step):
                img.rectangle((x, y0 + 2, min(x + 2, x1 - 2), y1 - 2), fill=(235, 225, 200))
    elif shape.kind == "tree":
        trunk_w = max(4, (x1 - x0) // 6)
        cx = (x0 + x1) // 2
        canopy_h = int((y1 - y0) * 0.65)
        img.rectangle((cx - trunk_w // 2, y0 + canopy_h // 2, cx + trunk_w // 2, y1), fill=(110, 70, 30))
        img.ellipse((x0, y0, x1, y0 + canopy_h), fill=c, outline=_darker(c))
        mask.rectangle((cx - trunk_w // 2, y0 + canopy_h // 2, cx + trunk_w // 2, y1), fill=255)
        mask.ellipse((x0, y0, x1, y0 + canopy_h), fill=255)
    elif shape.kind == "house":
        roof_h = (y1 - y0) // 3
        img.rectangle((x0, y0 + roof_h, x1, y1), fill=c, outline=_darker(c), width=2)
        img.polygon([(x0 - 4, y0 + roof_h), ((x0 + x1) // 2, y0), (x1 + 4, y0 + roof_h)], fill=(150, 40, 40))
        door_w = (x1 - x0) // 5
        cx = (x0 + x1) // 2
        img.rectangle((cx - door_w // 2, y1 - (y1 - y0) // 3, cx + door_w // 2, y1), fill=(90, 60, 30))
        mask.rectangle((x0, y0 + roof_h, x1, y1), fill=255)
        mask.polygon([(x0 - 4, y0 + roof_h), ((x0 + x1) // 2, y0), (x1 + 4, y0 + roof_h)], fill=255)
    elif shape.kind == "car":
        h = y1 - y0
        wheel = h // 3
        body_top = y0 + h // 3
        img.rectangle((x0, body_top, x1, y1 - wheel // 2), fill=c, outline=_darker(c), width=2)
        cab = (x0 + (x1 - x0) // 4, y0, x1 - (x1 - x0) // 4, body_top)
        img.rectangle(cab, fill=_darker(c, 0.85))
        img.rectangle((cab[0] + 3, cab[1] + 3, cab[2] - 3, cab[3]), fill=(200, 230, 250))
        mask.rectangle((x0, body_top, x1, y1 - wheel // 2), fill=255)
        mask.rectangle(cab, fill=255)
        for wx in (x0 + wheel, x1 - wheel):
            img.ellipse((wx - wheel // 2 - 2, y1 - wheel, wx + wheel // 2 + 2, y1), fill=(25, 25, 25))
            mask.ellipse((wx - wheel // 2 - 2, y1 - wheel, wx + wheel // 2 + 2, y1), fill=255)
    else:
        raise ValueError(f"shape kind must be ball, box, tree, sun, house or car, got {shape.kind!r}")


def render(shapes: dict[str, Shape]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw ``shapes`` (in order) over the background; returns the image and each shape's
    full silhouette mask."""
    img = Image.fromarray(_background(), mode="RGB")
    draw = ImageDraw.Draw(img)
    masks: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        m = Image.new("L", (SIZE, SIZE), 0)
        _draw_shape(draw, ImageDraw.Draw(m), shape)
        masks[key] = np.asarray(m) >= 128
    return np.asarray(img, dtype=np.uint8).copy(), masks


# --------------------------------------------------------------------------- global transforms


def night(img: np.ndarray) -> np.ndarray:
    """Dark, blue-tinted version of the scene."""
    out = img.astype(np.float64) * np.array([0.25, 0.3, 0.45]) + np.array([5.0, 10.0, 35.0])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def sketch(img: np.ndarray) -> np.ndarray:
    """Pencil-sketch look: dark strokes where the grey image has edges, white paper elsewhere."""
    grey = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gy, gx = np.gradient(grey)
    strokes = np.clip(np.hypot(gx, gy) * 6.0, 0, 255)
    paper = np.clip(np.rint(250.0 - strokes), 0, 255).astype(np.uint8)
    return np.repeat(paper[:, :, None], 3, axis=2)


def over_modify(img: np.ndarray, seed: int) -> np.ndarray:
    """A strong alteration of everything: colour shift, blur and noise (deterministic)."""
    shifted = np.clip(img.astype(np.float64) * 0.85 + np.array([60.0, 10.0, -45.0]), 0, 255)
    blurred = np.asarray(Image.fromarray(np.rint(shifted).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2.5)),
                         dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0.0, 20.0, size=img.shape)
    return np.clip(np.rint(blurred + noise), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- scenes

BALL = Shape("ball", (100, 170, 140, 210), (210, 40, 40))
BOX = Shape("box", (96, 176, 160, 230), (170, 120, 60))
TREE = Shape("tree", (176, 90, 236, 220), (40, 140, 50))
SUN = Shape("sun", (30, 20, 70, 60), (250, 210, 40))
HOUSE = Shape("house", (40, 110, 120, 210), (230, 220, 190))
CAR = Shape("car", (130, 180, 230, 225), (40, 80, 200))


@dataclass(frozen=True)
class Scene:
    """One demo sample: source shapes, edited shapes (or a global transform) and the
    expected structured reading of the instruction."""

    slug: str
    instruction: str
    edit_type: str
    source: dict[str, Shape]
    edited: dict[str, Shape] | None = None
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    expected_parse: dict[str, str] = field(default_factory=dict)


def _parse(source: str, target: str, edit_type: str, **kw: str) -> dict[str, str]:
    out = {"source_object": source, "target_object": target, "edit_type": edit_type, "anchor_object": "none",
           "added_object": "none", "size_relation": "none", "position_relation": "none"}
    out.update(kw)
    return out


SCENES: tuple[Scene, ...] = (
    Scene("replace-ball-box", "Replace the ball with a box.", "replace",
          {"tree": TREE, "obj": BALL}, {"tree": TREE, "obj": replace(BOX, box=(96, 168, 146, 212))},
          expected_parse=_parse("ball", "box", "replace", position_relation="unchanged")),
    Scene("add-ball-on-box", "Put a ball on top of the box.", "add",
          {"box": BOX}, {"box": BOX, "ball": replace(BALL, box=(108, 136, 148, 176))},
          expected_parse=_parse("none", "ball", "add", anchor_object="box", added_object="ball",
                                position_relation="above")),
    Scene("remove-car", "Remove the car.", "remove",
          {"house": HOUSE, "car": CAR}, {"house": HOUSE},
          expected_parse=_parse("car", "none", "remove")),
    Scene("color-ball-blue", "Make the ball blue.", "change color",
          {"tree": TREE, "ball": BALL}, {"tree": TREE, "ball": replace(BALL, color=(40, 70, 220))},
          expected_parse=_parse("ball", "blue ball", "change color", position_relation="unchanged")),
    Scene("texture-box-stripes", "Give the box a striped texture.", "change texture",
          {"sun": SUN, "box": BOX}, {"sun": SUN, "box": replace(BOX, texture="stripes")},
          expected_parse=_parse("box", "striped box", "change texture", position_relation="unchanged")),
    Scene("size-sun-bigger", "Make the sun bigger.", "change size",
          {"house": HOUSE, "sun": SUN}, {"house": HOUSE, "sun": replace(SUN, box=(20, 10, 90, 80))},
          expected_parse=_parse("sun", "sun", "change size", size_relation="bigger",
                                position_relation="unchanged")),
    Scene("global-night", "Make it a night scene.", "global",
          {"sun": SUN, "house": HOUSE, "tree": TREE}, transform=night,
          expected_parse=_parse("all", "all", "global")),
    Scene("global-sketch", "Turn the image into a sketch.", "global",
          {"tree": TREE, "car": replace(CAR, box=(30, 185, 130, 230))}, transform=sketch,
          expected_parse=_parse("all", "all", "global")),
    Scene("replace-car-tree", "Replace the car with a tree.", "replace",
          {"sun": SUN, "car": CAR}, {"sun": SUN, "car": replace(TREE, box=(150, 95, 210, 225))},
          expected_parse=_parse("car", "tree", "replace", position_relation="unchanged")),
    Scene("add-ball-left-of-tree", "Put a ball to the left of the tree.", "add",
          {"tree": TREE}, {"tree": TREE, "ball": replace(BALL, box=(110, 180, 150, 220))},
          expected_parse=_parse("none", "ball", "add", anchor_object="tree", added_object="ball",
                                position_relation="left")),
    Scene("remove-tree", "Remove the tree.", "remove",
          {"house": HOUSE, "tree": TREE}, {"house": HOUSE},
          expected_parse=_parse("tree", "none", "remove")),
    Scene("size-tree-smaller", "Make the tree smaller.", "change size",
          {"sun": SUN, "tree": replace(TREE, box=(120, 60, 220, 230))},
          {"sun": SUN, "tree": replace(TREE, box=(150, 140, 190, 230))},
          expected_parse=_parse("tree", "tree", "change size", size_relation="smaller",
                                position_relation="unchanged")),
)


def sample_id(index: int, scene: Scene) -> str:
    return f"demo-{index + 1:02d}-{scene.slug}"


@dataclass(frozen=True)
class DemoImages:
    """Every image of one demo sample (uint8 H×W×3 arrays and a boolean mask)."""

    source: np.ndarray
    mask: np.ndarray
    candidates: dict[str, np.ndarray]


def build_scene(index: int, scene: Scene) -> DemoImages:
    """Render one scene and its three candidates."""
    source, source_masks = render(scene.source)
    if scene.transform is not None:
        changed = scene.transform(source)
        mask = np.ones((SIZE, SIZE), dtype=bool)
    else:
        if scene.edited is None:  # pragma: no cover - every scene has one of the two
            raise ValueError(f"scene {scene.slug!r} needs edited shapes or a transform")
        changed, edited_masks = render(scene.edited)
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        for key in set(scene.source) | set(scene.edited):
            if scene.source.get(key) != scene.edited.get(key):
                mask |= source_masks.get(key, False) | edited_masks.get(key, False)
    well = np.where(mask[:, :, None], changed, source)
    return DemoImages(
        source=source,
        mask=mask,
        candidates={
            "well_edited": well,
            "over_preserved": source.copy(),
            "over_modified": over_modify(well, seed=1000 + index),
        },
    )


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class _DemoRecord:
    def __init__(self, index: int, scene: Scene) -> None:
        self.index, self.scene = index, scene

    def __call__(self) -> RecordData:
        images = build_scene(self.index, self.scene)
        sid = sample_id(self.index, self.scene)
        cands = {
            name: CandidateData(image=ImageRef(f"demo {sid} {name}", data=_png(images.candidates[name])),
                                fields={"role": name}, description=CANDIDATE_DESCRIPTIONS[name])
            for name in DEMO_CANDIDATES
        }
        origin: dict[str, Any] = {
            "dataset": "demo",
            "id": self.scene.slug,
            "edit_type": self.scene.edit_type,
            "expected_parse": dict(self.scene.expected_parse),
        }
        return RecordData(
            source=ImageRef(f"demo {sid} source", data=_png(images.source)),
            reference_mask=images.mask,
            reference_edit=ImageRef(f"demo {sid} well_edited", data=_png(images.candidates["well_edited"])),
            origin=origin,
            candidates=cands,
        )


class DemoLoader:
    """The bundled synthetic demo set (``demo``; needs no path)."""

    name = "demo"

    def records(self, path: Path | None = None, wanted: Container[str] | None = None
                ) -> Iterator[SourceRecord | SkippedRecord]:
        for index, scene in enumerate(SCENES):
            yield SourceRecord(
                sample_id=sample_id(index, scene),
                instruction=scene.instruction,
                edit_kind="global" if scene.transform is not None else "local",
                edit_type=scene.edit_type,
                load=_DemoRecord(index, scene),
            )


@dataclass(frozen=True)
class DemoSet:
    """What :func:`write_demo` wrote: the EvalSet and one precomputed EditSet per candidate."""

    root: Path
    info: EvalSetInfo
    manifest: Path
    candidates: dict[str, Path]


def write_demo(out: str | os.PathLike[str]) -> DemoSet:
    """Write the demo EvalSet (``manifest.jsonl``, images, masks, ``evalset.json``) and the
    candidates ``out/candidates/<name>/<sample_id>.png`` + ``editset.json`` into ``out``."""
    from bpm_lib.io.datasets import fetch

    root = Path(out)
    info = fetch("demo", root, name="demo")
    return DemoSet(
        root=root,
        info=info,
        manifest=root / "manifest.jsonl",
        candidates={name: root / "candidates" / name for name in DEMO_CANDIDATES},
    )
