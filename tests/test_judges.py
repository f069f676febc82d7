"""Judges of BPM_SPEC §4–§5, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bpm_lib.judges import (
    JudgePlan,
    cosine,
    crop_array,
    directional_similarity,
    edit_mask_500,
    expand_box,
    iou,
    judge,
    plan_judgement,
    position_score,
    preservation_distance,
    size_score,
)
from bpm_lib.masks import encode_rle
from bpm_lib.types import Detection, Localization, ParsedInstruction, SampleScore

# --------------------------------------------------------------------------- size (§4)

SRC = [[0, 0, 10, 10]]  # area 100


@pytest.mark.parametrize(
    ("edited", "relation", "expected"),
    [
        ([[0, 0, 13, 10]], "bigger", 1.0),  # r = 1.3
        ([[0, 0, 12, 10]], "bigger", 0.0),  # r = 1.2 exactly: not > 1.2
        ([[0, 0, 12, 10]], "unchanged", 1.0),  # 0.8 ≤ 1.2 ≤ 1.2
        ([[0, 0, 12, 10]], "smaller", 0.0),
        ([[0, 0, 7, 10]], "smaller", 1.0),  # r = 0.7
        ([[0, 0, 8, 10]], "smaller", 0.0),  # r = 0.8 exactly: not < 0.8
        ([[0, 0, 8, 10]], "unchanged", 1.0),
        ([[0, 0, 8, 10]], "bigger", 0.0),
        ([[0, 0, 13, 10]], "unchanged", 0.0),
        ([[0, 0, 7, 10]], "unchanged", 0.0),
        ([[0, 0, 50, 50]], "none", 1.0),  # no relation asked: passes
        ([[0, 0, 1, 1]], "none", 1.0),
    ],
)
def test_size_relations_and_threshold_edges(edited: list, relation: str, expected: float) -> None:
    assert size_score(edited, SRC, relation, "change size") == expected


def test_size_uses_first_boxes_only() -> None:
    # first edited box is 4x smaller; the second (lower confidence) would be much bigger
    assert size_score([[0, 0, 5, 5], [0, 0, 100, 100]], SRC, "bigger", "change size") == 0.0
    assert size_score([[0, 0, 20, 20], [0, 0, 1, 1]], SRC, "bigger", "change size") == 1.0
    assert (
        size_score([[0, 0, 20, 20]], [[0, 0, 10, 10], [0, 0, 30, 30]], "bigger", "change size")
        == 1.0
    )


def test_size_only_judged_for_change_size_with_boxes_on_both_sides() -> None:
    assert size_score([[0, 0, 1, 1]], SRC, "bigger", "replace") == 1.0
    assert size_score([[0, 0, 1, 1]], SRC, "bigger", "add") == 1.0
    assert size_score([], SRC, "bigger", "change size") == 1.0
    assert size_score([[0, 0, 1, 1]], [], "bigger", "change size") == 1.0


def test_size_zero_area_source_box() -> None:
    assert size_score([[0, 0, 5, 5]], [[3, 3, 3, 9]], "bigger", "change size") == 1.0  # r = inf
    assert size_score([[0, 0, 5, 5]], [[3, 3, 3, 9]], "unchanged", "change size") == 0.0
    assert size_score([[1, 1, 1, 1]], [[3, 3, 3, 9]], "unchanged", "change size") == 1.0  # 0/0 → 1


@pytest.mark.parametrize(
    ("boxes", "fragment"),
    [
        ([[0, 0, float("nan"), 1]], "finite"),
        ([[5, 0, 1, 1]], "negative size"),
        ([[0, 0, 1]], "shape"),
        ([0, 0, 1, 1], "shape"),  # one box, not a sequence of boxes
        ([["a", "b", "c", "d"]], "numbers"),
        ([[True, False, True, True]], "numbers"),
        (None, "None"),
        ([[0, 0, 1, 1], [0, 0, 1]], "boxes"),
    ],
)
def test_invalid_boxes_raise_naming_argument(boxes: object, fragment: str) -> None:
    with pytest.raises(ValueError, match="edited_boxes") as info:
        size_score(boxes, SRC, "bigger", "change size")  # type: ignore[arg-type]
    assert fragment in str(info.value)
    with pytest.raises(ValueError, match="anchor_boxes"):
        position_score([[0, 0, 1, 1]], boxes, "left", True)  # type: ignore[arg-type]


def test_invalid_relations_raise() -> None:
    with pytest.raises(ValueError, match="size_relation"):
        size_score(SRC, SRC, "larger", "change size")
    with pytest.raises(ValueError, match="edit_type"):
        size_score(SRC, SRC, "bigger", "resize")
    with pytest.raises(ValueError, match="position_relation"):
        position_score(SRC, SRC, "on top", True)
    with pytest.raises(TypeError, match="is_addition"):
        position_score(SRC, SRC, "left", "yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- position (§4)

ANCHOR = [100, 100, 200, 200]  # centre (150, 150)
RIGHT = [300, 140, 400, 160]  # centre (350, 150)
LEFT = [0, 140, 50, 160]
ABOVE = [140, 0, 160, 50]
BELOW = [140, 300, 160, 350]
DIAGONAL = [240, 240, 260, 260]  # |dx| == |dy| == 100


@pytest.mark.parametrize(
    ("box", "passes"),
    [
        (RIGHT, {"right"}),
        (LEFT, {"left"}),
        (ABOVE, {"above"}),
        (BELOW, {"below"}),
        (DIAGONAL, set()),  # neither |dx| > |dy| nor |dy| > |dx|
    ],
)
def test_directional_relations(box: list, passes: set) -> None:
    for relation in ("left", "right", "above", "below"):
        expected = 1.0 if relation in passes else 0.0
        assert position_score([box], [ANCHOR], relation, True) == expected, relation


def test_directional_relation_iou_edge() -> None:
    anchor = [0, 0, 100, 100]
    # inter 60*100, union 10000 + 11000 - 6000: IoU exactly 0.4 → not < 0.4
    at_edge = [40, 0, 150, 100]
    assert iou(at_edge, anchor) == 0.4
    assert position_score([at_edge], [anchor], "right", True) == 0.0
    # inter 59*100, union 15000: IoU 0.3933 → passes
    below_edge = [41, 0, 150, 100]
    assert iou(below_edge, anchor) == pytest.approx(5900 / 15000)
    assert position_score([below_edge], [anchor], "right", True) == 1.0


def test_inside_is_strict_on_every_edge() -> None:
    assert position_score([[110, 110, 190, 190]], [ANCHOR], "inside", True) == 1.0
    for touching in (
        [100, 110, 190, 190],
        [110, 100, 190, 190],
        [110, 110, 200, 190],
        [110, 110, 190, 200],
    ):
        assert position_score([touching], [ANCHOR], "inside", True) == 0.0, touching
    assert position_score([ANCHOR], [ANCHOR], "inside", True) == 0.0
    assert position_score([[90, 110, 190, 190]], [ANCHOR], "inside", True) == 0.0


def test_unchanged_distance_edge() -> None:
    # centre moves by (20, 20): |dx| + |dy| = 40 exactly → not < 40
    assert position_score([[120, 120, 220, 220]], [ANCHOR], "unchanged", True) == 0.0
    # (20, 19.5): 39.5 → passes
    assert position_score([[120, 119.5, 220, 219.5]], [ANCHOR], "unchanged", True) == 1.0
    assert position_score([ANCHOR], [ANCHOR], "unchanged", True) == 1.0


def test_relation_none_always_passes() -> None:
    assert position_score([[400, 400, 500, 500]], [ANCHOR], "none", True) == 1.0


def test_several_edited_boxes_score_all_some_none() -> None:
    assert position_score([RIGHT, [300, 100, 350, 200]], [ANCHOR], "right", True) == 1.0
    assert position_score([RIGHT, LEFT], [ANCHOR], "right", True) == 0.5
    assert position_score([LEFT, ABOVE, RIGHT], [ANCHOR], "right", True) == 0.5
    assert position_score([LEFT, ABOVE], [ANCHOR], "right", True) == 0.0


def test_position_uses_first_anchor_box_only() -> None:
    far_right_anchor = [450, 140, 500, 160]
    assert position_score([RIGHT], [ANCHOR, far_right_anchor], "right", True) == 1.0
    assert position_score([RIGHT], [far_right_anchor, ANCHOR], "right", True) == 0.0


def test_position_only_judged_for_additions_with_boxes() -> None:
    assert position_score([LEFT], [ANCHOR], "right", False) == 1.0
    assert position_score([], [ANCHOR], "right", True) == 1.0
    assert position_score([LEFT], [], "right", True) == 1.0


# --------------------------------------------------------------------------- boxes


def test_iou_values() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([5, 5, 5, 5], [5, 5, 5, 5]) == 0.0  # zero-area union (reference: ZeroDivisionError)
    assert iou([5, 5, 5, 9], [5, 5, 5, 9]) == 0.0
    with pytest.raises(ValueError, match="b must be one box"):
        iou([0, 0, 1, 1], [[0, 0, 1, 1]])  # type: ignore[list-item]


box_st = st.tuples(st.floats(0, 500), st.floats(0, 500), st.floats(0, 500), st.floats(0, 500)).map(
    lambda t: (min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3]))
)


@settings(max_examples=200, deadline=None)
@given(box_st, box_st)
def test_iou_symmetric_and_bounded(a: tuple, b: tuple) -> None:
    v = iou(a, b)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(iou(b, a))


def test_expand_box() -> None:
    assert expand_box([[100, 100, 200, 200]], 1.5, 500, 500) == (75.0, 75.0, 225.0, 225.0)
    # enclosing box (0, 0, 30, 30), expanded 1.5× → (-7.5, -7.5, 37.5, 37.5), clipped at 0
    assert expand_box([[0, 0, 10, 10], [20, 20, 30, 30]], 1.5, 500, 500) == (0.0, 0.0, 37.5, 37.5)
    # height 100, width 200: clipped to x ≤ 200 and y ≤ 100
    assert expand_box([(150, 80, 190, 100)], 2.0, 100, 200) == (130.0, 70.0, 200.0, 100.0)
    assert expand_box([[10, 10, 10, 10]], 1.5, 500, 500) == (10.0, 10.0, 10.0, 10.0)
    with pytest.raises(ValueError, match="at least one box"):
        expand_box([], 1.5, 500, 500)
    with pytest.raises(ValueError, match="scale"):
        expand_box([[0, 0, 1, 1]], 0, 500, 500)
    with pytest.raises(ValueError, match="height"):
        expand_box([[0, 0, 1, 1]], 1.5, -1, 500)


def test_crop_array() -> None:
    img = np.arange(500 * 500 * 3, dtype=np.uint8).reshape(500, 500, 3)
    crop = crop_array(img, (75.0, 10.5, 225.2, 20.0))
    assert crop.shape == (10, 151, 3)  # y 10..20, x 75..226
    assert np.shares_memory(crop, img)
    assert np.array_equal(crop, img[10:20, 75:226])
    assert crop_array(img, (10.0, 10.0, 10.0, 10.0)).shape == (1, 1, 3)  # never empty
    assert crop_array(img, (499.5, 499.5, 500.0, 500.0)).shape == (1, 1, 3)


# --------------------------------------------------------------------------- S_modify (§5)


def test_directional_similarity_standard_addition_removal() -> None:
    i_s, i_e = [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]  # ΔI = (0, 1, 0)
    assert directional_similarity(i_s, i_e, [0, 0, 1], [0, 1, 1]) == pytest.approx(1.0)
    assert directional_similarity(i_s, i_e, [0, 1, 1], [0, 0, 1]) == pytest.approx(-1.0)
    # addition: ΔT = T_t = (0, 1, 1) → cos = 1/√2
    assert directional_similarity(i_s, i_e, None, [0, 1, 1]) == pytest.approx(1 / math.sqrt(2))
    # removal: ΔT = -T_s
    assert directional_similarity(i_s, i_e, [0, -1, 0], None) == pytest.approx(1.0)
    assert directional_similarity(i_s, i_e, [0, 1, 0], None) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="both be None"):
        directional_similarity(i_s, i_e, None, None)


def test_directional_similarity_uses_raw_features() -> None:
    # raw ΔI = (-1, 2); with unit-normalised features it would be (-1, 1) → 1/√2
    assert directional_similarity([1, 0], [0, 2], None, [0, 1]) == pytest.approx(2 / math.sqrt(5))


def test_directional_similarity_zero_vectors_give_zero() -> None:
    assert directional_similarity([1, 2, 3], [1, 2, 3], [0, 0, 1], [0, 1, 1]) == 0.0
    assert directional_similarity([1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 1, 1]) == 0.0
    assert cosine([0, 0], [1, 0]) == 0.0


def test_embedding_validation() -> None:
    assert directional_similarity(
        np.ones((1, 3)), np.eye(3)[0:1] * 2, None, np.ones((1, 3))
    ) == pytest.approx(directional_similarity([1, 1, 1], [2, 0, 0], None, [1, 1, 1]))
    with pytest.raises(ValueError, match="edited_image_emb has dimension 2"):
        directional_similarity([1, 0, 0], [1, 0], None, [1, 0, 0])
    with pytest.raises(ValueError, match="target_text_emb must be finite"):
        directional_similarity([1, 0, 0], [1, 1, 0], None, [np.nan, 0, 0])
    with pytest.raises(ValueError, match="source_image_emb must be a 1-D"):
        directional_similarity(np.ones((2, 3)), [1, 1, 0], None, [1, 0, 0])


vec_st = hnp.arrays(np.float64, 8, elements=st.floats(-10, 10))


@settings(max_examples=100, deadline=None)
@given(vec_st, vec_st, vec_st, vec_st, st.floats(0.01, 100))
def test_directional_similarity_scale_invariant(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, k: float
) -> None:
    v = directional_similarity(a, b, c, d)
    assert -1.0 <= v <= 1.0
    di, dt = b - a, d - c
    if np.linalg.norm(di) > 1e-3 and np.linalg.norm(dt) > 1e-3:
        assert directional_similarity(k * a, k * b, c, d) == pytest.approx(v, abs=1e-9)
        assert directional_similarity(a, b, k * c, k * d) == pytest.approx(v, abs=1e-9)


# --------------------------------------------------------------------------- S_preserve (§5)


def _img(value: int | tuple[int, int, int], h: int = 4, w: int = 4) -> np.ndarray:
    out = np.zeros((h, w, 3), dtype=np.uint8)
    out[...] = value
    return out


def test_preservation_no_uint8_wraparound() -> None:
    # 10 - 20 in uint8 wraps to 246; in float it is -10 → d = 10
    assert preservation_distance(_img(10), _img(20), None) == pytest.approx(10 / 255, rel=1e-6)
    assert preservation_distance(_img(20), _img(10), None) == pytest.approx(10 / 255, rel=1e-6)


def test_preservation_channel_mean_and_mask() -> None:
    a = _img(0, 2, 2)
    b = _img(0, 2, 2)
    b[0, 1] = (30, 30, 30)  # d = 30
    b[1, 0] = (30, 0, 0)  # d = sqrt(900 / 3) = sqrt(300)
    b[1, 1] = (255, 255, 255)  # inside the mask: ignored
    mask = np.zeros((2, 2), dtype=bool)
    mask[1, 1] = True
    expected = (0 + 30 + math.sqrt(300)) / 3 / 255
    assert preservation_distance(a, b, mask) == pytest.approx(expected, rel=1e-6)
    # without the mask the 255 pixel counts: d = 255
    assert preservation_distance(a, b, None) == pytest.approx(
        (30 + math.sqrt(300) + 255) / 4 / 255, rel=1e-6
    )
    assert preservation_distance(a, b, np.zeros((2, 2), dtype=bool)) == preservation_distance(
        a, b, None
    )


def test_preservation_extremes() -> None:
    assert preservation_distance(_img(0), _img(255), None) == pytest.approx(1.0, rel=1e-6)
    assert preservation_distance(_img(7), _img(7), None) == 0.0


def test_preservation_whole_mask_is_undefined() -> None:
    with pytest.raises(ValueError, match="edit_mask covers the whole image"):
        preservation_distance(_img(0), _img(1), np.ones((4, 4), dtype=bool))


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"source": _img(0).astype(np.float32)}, ValueError, "source must have dtype uint8"),
        ({"edited": _img(0, 4, 5)}, ValueError, "same shape"),
        ({"edited": np.zeros((4, 4), np.uint8)}, ValueError, "edited must be an H×W×3"),
        ({"source": [[0]]}, TypeError, "source must be a numpy array"),
        ({"edit_mask": np.zeros((4, 4), np.uint8)}, ValueError, "edit_mask must have dtype bool"),
        ({"edit_mask": np.zeros((4, 5), bool)}, ValueError, "edit_mask must have shape"),
        ({"edit_mask": [[False]]}, TypeError, "edit_mask must be a numpy"),
    ],
)
def test_preservation_validation(kwargs: dict, error: type, fragment: str) -> None:
    args = {"source": _img(0), "edited": _img(1), "edit_mask": None, **kwargs}
    with pytest.raises(error, match=fragment):
        preservation_distance(**args)


def _reference_distance(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    d = np.sqrt(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=-1))
    return float(d[~mask].mean() / 255.0)


img_st = hnp.arrays(np.uint8, (6, 5, 3))
mask_st = hnp.arrays(np.bool_, (6, 5)).filter(lambda m: not m.all())


@settings(max_examples=150, deadline=None)
@given(img_st, img_st, mask_st)
def test_preservation_properties(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> None:
    a_copy, b_copy, m_copy = a.copy(), b.copy(), mask.copy()
    d = preservation_distance(a, b, mask)
    assert 0.0 <= d <= 1.0
    assert d == preservation_distance(b, a, mask)  # symmetric
    assert preservation_distance(a, a, mask) == 0.0
    assert d == pytest.approx(_reference_distance(a, b, mask), rel=1e-6, abs=1e-9)
    assert np.array_equal(a, a_copy) and np.array_equal(b, b_copy) and np.array_equal(mask, m_copy)


def test_preservation_matches_float64_on_frame_size() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (500, 500, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (500, 500, 3), dtype=np.uint8)
    mask = np.zeros((500, 500), dtype=bool)
    mask[100:300, 150:400] = True
    assert preservation_distance(a, b, mask) == pytest.approx(
        _reference_distance(a, b, mask), rel=1e-7
    )


# --------------------------------------------------------------------------- planning and judge


def _loc(
    side: str,
    boxes: list,
    *,
    mask: np.ndarray | None = None,
    method: str = "detect-segment",
    size: tuple[int, int] = (500, 500),
) -> Localization:
    w, h = size
    dets = tuple(
        Detection(
            tuple(b),
            tuple(v * 500 / s for v, s in zip(b, (w, h, w, h), strict=True)),
            0.9 - 0.1 * i,
            "x",
        )
        for i, b in enumerate(boxes)
    )
    return Localization(
        sample_id="s1",
        side=side,  # type: ignore[arg-type]
        phrase="x",
        width=w,
        height=h,
        detections=dets,
        mask=encode_rle(mask) if mask is not None else None,
        method=method,
        candidate=None if side == "source" else "ckpt",
    )


REPLACE = ParsedInstruction("bike", "bear", "replace")
REMOVE = ParsedInstruction("bike", "none", "remove")
BIGGER = ParsedInstruction("flower", "flower", "change size", size_relation="bigger")
ADD_ABOVE = ParsedInstruction(
    "none", "bird", "add", anchor_object="tower", added_object="bird", position_relation="above"
)
GLOBAL = ParsedInstruction("all", "all", "global")

E3 = np.eye(3)


def _frame_images(
    inside: int = 255, outside: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.zeros((500, 500, 3), dtype=np.uint8)
    edited = np.full((500, 500, 3), outside, dtype=np.uint8)
    edited[100:200, 100:200] = inside
    mask = np.zeros((500, 500), dtype=bool)
    mask[100:200, 100:200] = True
    return src, edited, mask


def _judge(
    plan: JudgePlan,
    parsed: ParsedInstruction,
    source: Localization | None,
    edited: Localization | None,
    image_embs: dict,
    text_embs: dict,
    mask: np.ndarray | None = None,
) -> SampleScore:
    src, ed, m = _frame_images()
    return judge(
        plan,
        sample_id="s1",
        candidate="ckpt",
        parsed=parsed,
        source=source,
        edited=edited,
        source_500=src,
        edited_500=ed,
        edit_mask=m if mask is None else mask,
        image_embs=image_embs,
        text_embs=text_embs,
    )


def test_standard_replace_plan_and_judge() -> None:
    src_mask = np.zeros((500, 500), dtype=bool)
    src_mask[100:200, 100:200] = True
    source = _loc("source", [[100, 100, 200, 200]], mask=src_mask)
    edited = _loc("edited", [[110, 110, 190, 190]], mask=np.zeros((500, 500), dtype=bool))
    plan = plan_judgement(REPLACE, "Replace the bike with bear.", source, edited)
    assert plan == JudgePlan(
        case="standard",
        geometry="judged",
        crop_box=(75.0, 75.0, 225.0, 225.0),
        image_inputs=("source_crop", "edited_crop"),
        texts={"source": "bike", "target": "bear"},
        preserve_mask="edit_mask",
    )
    assert plan.text_inputs == {"source": "bike", "target": "bear"}
    mask = edit_mask_500(source, edited)
    score = _judge(
        plan,
        REPLACE,
        source,
        edited,
        {"source_crop": [1, 0, 0], "edited_crop": [1, 1, 0]},
        {"source": [0, 0, 1], "target": [0, 1, 1]},
        mask,
    )
    assert score.case == "standard" and score.geometry == "judged" and score.ok
    assert score.s_modify == pytest.approx(1.0)
    assert score.s_preserve == pytest.approx(10 / 255, rel=1e-6)  # only outside the 255 block
    assert (score.s_size, score.s_position, score.s_region) == (1.0, 1.0, 2.0)
    assert score.source_boxes == [[100.0, 100.0, 200.0, 200.0]]
    assert score.edited_boxes == [[110.0, 110.0, 190.0, 190.0]]
    assert score.parsed == REPLACE.to_dict() and score.edit_type == "replace"
    assert score.bpm is None and score.calibration_id is None


def test_change_size_judged_through_judge() -> None:
    source = _loc("source", [[100, 100, 200, 200]])
    for edited_box, expected in (
        ([90, 90, 210, 210], 1.0),
        ([105, 105, 195, 195], 0.0),
    ):  # r 1.44 / 0.81
        edited = _loc("edited", [edited_box])
        plan = plan_judgement(BIGGER, "make the flower bigger", source, edited)
        score = _judge(
            plan,
            BIGGER,
            source,
            edited,
            {"source_crop": [1, 0], "edited_crop": [0, 1]},
            {"source": [1, 0], "target": [1, 1]},
        )
        assert score.s_size == expected
        assert score.s_region == 1.0 + expected


def test_addition_uses_edited_boxes_for_crop_and_judges_position() -> None:
    source = _loc("source", [[200, 200, 300, 400]])  # the tower (anchor)
    edited = _loc("edited", [[230, 50, 270, 100]])  # the bird, above it
    plan = plan_judgement(ADD_ABOVE, "put a bird on top of the tower", source, edited)
    assert plan.case == "standard"
    assert plan.crop_box == (220.0, 37.5, 280.0, 112.5)
    assert plan.texts == {"source": None, "target": "bird"}
    assert plan.text_inputs == {"target": "bird"}
    score = _judge(
        plan,
        ADD_ABOVE,
        source,
        edited,
        {"source_crop": E3[0], "edited_crop": E3[0] + E3[1]},
        {"target": [0, 1, 1]},
    )
    assert score.s_modify == pytest.approx(1 / math.sqrt(2))
    assert score.s_position == 1.0 and score.s_region == 2.0
    below = _loc("edited", [[230, 420, 270, 480]])
    plan = plan_judgement(ADD_ABOVE, "put a bird on top of the tower", source, below)
    score = _judge(
        plan,
        ADD_ABOVE,
        source,
        below,
        {"source_crop": E3[0], "edited_crop": E3[1]},
        {"target": E3[1]},
    )
    assert score.s_position == 0.0 and score.s_region == 1.0


def test_addition_without_anchor_found_is_standard_with_position_one() -> None:
    edited = _loc("edited", [[230, 50, 270, 100]])
    plan = plan_judgement(ADD_ABOVE, "put a bird on top of the tower", _loc("source", []), edited)
    assert plan.case == "standard"
    score = _judge(
        plan,
        ADD_ABOVE,
        _loc("source", []),
        edited,
        {"source_crop": E3[0], "edited_crop": E3[1]},
        {"target": E3[1]},
    )
    assert score.s_position == 1.0


def test_removal_is_standard_with_negative_source_text() -> None:
    source = _loc("source", [[100, 100, 200, 200]])
    plan = plan_judgement(REMOVE, "Remove the bike.", source, None)  # nothing to detect in the edit
    assert plan.case == "standard"
    assert plan.texts == {"source": "bike", "target": None}
    score = _judge(
        plan,
        REMOVE,
        source,
        None,
        {"source_crop": E3[0], "edited_crop": E3[0] - E3[1]},
        {"source": E3[1]},
    )
    assert score.s_modify == pytest.approx(1.0)  # ΔI = -e1, ΔT = -T_s = -e1
    assert score.edited_boxes == []


def test_global_case() -> None:
    instruction = "Change the image to a cartoon style."
    plan = plan_judgement(GLOBAL, instruction, None, None)
    assert plan.case == "global" and plan.geometry == "not_judged"
    assert plan.crop_box is None and plan.image_inputs == ("edited_full",)
    assert plan.texts == {"instruction": instruction} and plan.preserve_mask == "not_applicable"
    score = _judge(plan, GLOBAL, None, None, {"edited_full": [1, 1, 0]}, {"instruction": [1, 0, 0]})
    assert score.case == "global"
    assert score.s_modify == pytest.approx(1 / math.sqrt(2))
    assert score.s_preserve is None
    assert (score.s_size, score.s_position, score.s_region) == (1.0, 1.0, 2.0)
    assert score.source_boxes == [] and score.edited_boxes == []


def test_source_not_found_case() -> None:
    for source in (None, _loc("source", [])):
        plan = plan_judgement(
            REPLACE, "Replace the bike with bear.", source, _loc("edited", [[0, 0, 10, 10]])
        )
        assert plan.case == "source_not_found"
        assert plan.image_inputs == ("edited_full",) and plan.texts == {"target": "bear"}
        assert plan.preserve_mask == "whole_image"
        score = _judge(plan, REPLACE, source, None, {"edited_full": [1, 1]}, {"target": [1, 0]})
        assert score.case == "source_not_found"
        assert score.s_modify == pytest.approx(1 / math.sqrt(2))
        # whole image: the 100×100 block of 255 counts although the edit mask covers it
        expected = (240000 * 10 + 10000 * 255) / 250000 / 255
        assert score.s_preserve == pytest.approx(expected, rel=1e-6)


def test_source_not_found_wins_over_target_not_found() -> None:
    plan = plan_judgement(
        REPLACE, "Replace the bike with bear.", _loc("source", []), _loc("edited", [])
    )
    assert plan.case == "source_not_found"


def test_removal_with_source_not_found_scores_zero() -> None:
    plan = plan_judgement(REMOVE, "Remove the bike.", _loc("source", []), None)
    assert plan.case == "source_not_found"
    assert plan.image_inputs == () and plan.texts == {}
    score = _judge(plan, REMOVE, _loc("source", []), None, {}, {})
    assert score.s_modify == 0.0 and score.s_preserve is not None


def test_target_not_found_case() -> None:
    source = _loc("source", [[100, 100, 200, 200]])
    for edited in (None, _loc("edited", [])):
        plan = plan_judgement(REPLACE, "Replace the bike with bear.", source, edited)
        assert plan.case == "target_not_found"
        assert plan.image_inputs == () and plan.preserve_mask == "whole_image"
        score = _judge(plan, REPLACE, source, edited, {}, {})
        assert score.case == "target_not_found" and score.s_modify == 0.0
        assert score.s_preserve == pytest.approx(
            (240000 * 10 + 10000 * 255) / 250000 / 255, rel=1e-6
        )
    # an addition whose added object is missing
    plan = plan_judgement(ADD_ABOVE, "put a bird on top of the tower", source, _loc("edited", []))
    assert plan.case == "target_not_found"


def test_reference_mask_never_triggers_not_found_and_geometry_is_not_judged() -> None:
    mask = np.zeros((500, 500), dtype=bool)
    mask[100:200, 100:200] = True
    source = _loc("source", [], method="reference-mask", mask=mask)
    edited = _loc("edited", [], method="reference-mask", mask=mask)
    plan = plan_judgement(BIGGER, "make the flower bigger", source, edited)
    assert plan.case == "standard" and plan.geometry == "not_judged"
    assert plan.crop_box == (0.0, 0.0, 500.0, 500.0)  # no box at all: whole frame
    # boxes that would fail the size judgement are not judged
    source = _loc("source", [[100, 100, 200, 200]], method="reference-mask")
    edited = _loc("edited", [[140, 140, 160, 160]], method="reference-mask")
    plan = plan_judgement(BIGGER, "make the flower bigger", source, edited)
    assert plan.crop_box == (75.0, 75.0, 225.0, 225.0)
    score = _judge(
        plan,
        BIGGER,
        source,
        edited,
        {"source_crop": [1, 0], "edited_crop": [0, 1]},
        {"source": [1, 0], "target": [1, 1]},
    )
    assert score.geometry == "not_judged" and score.s_size == 1.0 and score.s_region == 2.0
    assert score.edited_boxes is not None and score.source_boxes is not None
    assert size_score(score.edited_boxes, score.source_boxes, "bigger", "change size") == 0.0


def test_judge_requires_planned_embeddings() -> None:
    source = _loc("source", [[100, 100, 200, 200]])
    edited = _loc("edited", [[110, 110, 190, 190]])
    plan = plan_judgement(REPLACE, "Replace the bike with bear.", source, edited)
    with pytest.raises(ValueError, match="image_embs must contain 'edited_crop'"):
        _judge(
            plan,
            REPLACE,
            source,
            edited,
            {"source_crop": [1, 0]},
            {"source": [1, 0], "target": [0, 1]},
        )
    with pytest.raises(ValueError, match="text_embs must contain 'target'"):
        _judge(
            plan,
            REPLACE,
            source,
            edited,
            {"source_crop": [1, 0], "edited_crop": [0, 1]},
            {"source": [1, 0]},
        )


def test_plan_validation() -> None:
    source = _loc("source", [[100, 100, 200, 200]])
    with pytest.raises(ValueError, match="source must be the 'source' side"):
        plan_judgement(REPLACE, "x", _loc("edited", []), None)
    with pytest.raises(TypeError, match="parsed"):
        plan_judgement(REPLACE.to_dict(), "x", source, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="case"):
        JudgePlan("weird", "judged", None, ())
    with pytest.raises(ValueError, match="image_inputs"):
        JudgePlan("standard", "judged", None, ("source_full",))
    with pytest.raises(ValueError, match="geometry"):
        JudgePlan("standard", "maybe", None, ())
    plan = plan_judgement(REPLACE, "x", source, _loc("edited", [[0, 0, 1, 1]]))
    assert plan.to_dict()["crop_box"] == [75.0, 75.0, 225.0, 225.0]


def test_edit_mask_500_union_resized_nearest() -> None:
    big = np.zeros((1000, 800), dtype=bool)  # H 1000, W 800
    big[:500, :400] = True  # top-left quadrant
    small = np.zeros((500, 500), dtype=bool)
    small[400:, 400:] = True
    source = _loc("source", [[0, 0, 400, 500]], mask=big, size=(800, 1000))
    edited = _loc("edited", [[400, 400, 500, 500]], mask=small)
    mask = edit_mask_500(source, edited)
    assert mask.shape == (500, 500) and mask.dtype == bool
    expected = np.zeros((500, 500), dtype=bool)
    expected[:250, :250] = True
    expected[400:, 400:] = True
    assert np.array_equal(mask, expected)
    assert not edit_mask_500(_loc("source", []), None).any()
    assert edit_mask_500(None, None, frame=64).shape == (64, 64)


def test_edit_mask_500_rejects_mask_of_wrong_size() -> None:
    source = _loc("source", [[0, 0, 10, 10]], mask=np.zeros((10, 10), dtype=bool), size=(800, 1000))
    with pytest.raises(ValueError, match=r"source\.mask has size 10x10"):
        edit_mask_500(source, None)
