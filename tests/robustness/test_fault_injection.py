"""Resumable runs: ``bpm score`` and the pipeline steps are SIGKILLed at seeded points
(right after a record, in the middle of writing one, from outside while they run, and
while a step publishes its output), then resumed. The resumed result must equal an
uninterrupted run: same scores per sample, every JSONL line whole, no key twice, and no
published step output that is incomplete."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bpm_lib.cli import main
from bpm_lib.runner.cache import META, StageCache
from bpm_lib.runner.stages import scores_file
from tests.robustness.campaigns import CANDIDATES, build_campaign
from tests.robustness.catalogue import H, W, ordinary_png
from tests.robustness.faults import jsonl_lines, run_and_kill

pytestmark = pytest.mark.slow

SEED = 20240808
N_SAMPLES = 10
FLOATS = ("bpm", "s_modify", "s_preserve", "s_region", "s_size", "s_position")


def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record.get("sample_id"), record.get("candidate"))


def assert_jsonl_clean(folder: Path) -> int:
    """Every ``*.jsonl`` below ``folder``: whole lines only, each key at most once."""
    files = list(folder.rglob("*.jsonl"))
    for path in files:
        if path.name == "events.jsonl":  # the cache's lookup log is append-only by design
            continue
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"torn last line in {path}"
        keys = [_key(json.loads(line)) for line in data.splitlines() if line.strip()]
        dupes = {k for k in keys if keys.count(k) > 1}
        assert not dupes, f"{path}: keys written twice: {sorted(map(str, dupes))}"
    return len(files)


def assert_same_scores(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    a, b = {_key(r): r for r in got}, {_key(r): r for r in want}
    assert len(a) == len(got) and set(a) == set(b)
    for key, rec in b.items():
        mine = a[key]
        for field in ("status", "error", "case", "edit_type"):
            assert mine.get(field) == rec.get(field), (key, field)
        for field in FLOATS:  # batches differ after a resume: float32 embeddings move in the last bits
            if rec.get(field) is None:
                assert mine.get(field) is None, (key, field)
            else:
                assert mine[field] == pytest.approx(rec[field], abs=1e-5), (key, field)


def _kill_points(total: int, n: int, salt: str) -> list[int]:
    return sorted(random.Random(f"{SEED}-{salt}").sample(range(1, total), n))


# --------------------------------------------------------------------------- bpm score


def write_score_set(root: Path) -> Path:
    """``N_SAMPLES`` good samples and one whose source is corrupt (an error record)."""
    root.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[H // 4 : H // 2, W // 4 : W // 2] = 255
    Image.fromarray(mask).save(root / "mask.png")
    texts = ("Make the ball blue.", "Replace the ball with a box.", "Remove the car.", "Add a hat to the dog.")
    lines = []
    for i in range(N_SAMPLES):
        (root / f"src-{i}.png").write_bytes(ordinary_png(i))
        src = np.asarray(Image.open(root / f"src-{i}.png"))
        edited = src.copy()
        edited[mask > 0] = 255 - edited[mask > 0]
        Image.fromarray(edited).save(root / f"edit-{i}.png")
        lines.append({"sample_id": f"s{i:02d}", "instruction": texts[i % len(texts)], "source_image": f"src-{i}.png",
                      "reference_mask": "mask.png", "edited_image": f"edit-{i}.png"})
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    lines.append({"sample_id": "bad-source", "instruction": texts[0], "source_image": "corrupt.png",
                  "reference_mask": "mask.png", "edited_image": "edit-0.png"})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _score_args(manifest: Path, out: Path) -> list[str]:
    return ["score", "--manifest", str(manifest), "--out", str(out), "--preset", "tiny-random", "--localizer",
            "reference-mask", "--candidate", "cand", "--batch-size", "3", "--no-progress"]


def _read_scores(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def score_baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("score-fi")
    manifest = write_score_set(root / "set")
    assert main(_score_args(manifest, root / "baseline")) == 1  # the corrupt sample fails, as it should
    records = jsonl_lines(root / "baseline" / "work")
    # parse, localize source, localize edited (not for the failed source), judge: one record each
    assert records == 4 * (N_SAMPLES + 1) - 1
    return {"root": root, "manifest": manifest, "scores": _read_scores(root / "baseline"), "records": records}


@pytest.mark.parametrize("mode", ["after", "torn", "external"])
def test_bpm_score_killed_at_seeded_points_resumes_to_the_same_result(score_baseline: dict[str, Any],
                                                                      mode: str) -> None:
    root, manifest = score_baseline["root"], score_baseline["manifest"]
    # from outside the kill lands a little late: aim in the first 60% so it lands mid-run
    total = score_baseline["records"] if mode != "external" else int(score_baseline["records"] * 0.6)
    (point,) = _kill_points(total, 1, mode)
    out = root / f"killed-{mode}"
    code = f"from bpm_lib.cli import main\nmain({_score_args(manifest, out)!r})"
    rc = run_and_kill(code, mode=mode, at=point, watch=out / "work")
    assert rc == -9, f"the child was not killed at record {point}"
    assert not (out / "scores.jsonl").exists()  # a killed run publishes nothing
    written = jsonl_lines(out / "work")
    assert written >= (point - 1 if mode == "torn" else point) - 1

    assert main(_score_args(manifest, out)) == 1  # resume
    assert_jsonl_clean(out / "work")
    assert_same_scores(_read_scores(out), score_baseline["scores"])
    summary = json.loads((out / "summary.json").read_text())
    stages = {st["stage"]: st for st in summary["stages"]}
    reused = sum(st["reused"] for st in stages.values())
    # every whole record written before the kill is kept, except the two failure records of
    # the corrupt sample (source localization, judge), which are retried by design
    assert written - 2 <= reused <= written
    # Resuming a finished run recomputes nothing and rewrites nothing.
    before = {p: p.read_bytes() for p in (out / "work").glob("*.jsonl")}
    assert main(_score_args(manifest, out)) == 1
    assert {p: p.read_bytes() for p in (out / "work").glob("*.jsonl")} == before
    assert_same_scores(_read_scores(out), score_baseline["scores"])


# --------------------------------------------------------------------------- pipeline steps

STEP_LIMIT = 6


def _judged(root: Path) -> list[dict[str, Any]]:
    rows = []
    for name in CANDIDATES:
        path = root / f"judged-{name}" / scores_file(name)
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


@pytest.fixture(scope="module")
def steps_baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("steps-fi")
    cache = StageCache(root / "cache" / "stages")
    build_campaign(root / "baseline", limit=STEP_LIMIT, cache=cache, aggregate=False)
    # every record a stage wrote (the EvalSet manifest is written whole, not record by record)
    records = jsonl_lines(root / "baseline") - jsonl_lines(root / "baseline" / "evalset")
    assert records == STEP_LIMIT * (2 + 3 * len(CANDIDATES))
    return {"root": root, "judged": _judged(root / "baseline"), "records": records}


def _chain_code(root: Path, cache_root: Path) -> str:
    return (
        "from pathlib import Path\n"
        "from bpm_lib.runner.cache import StageCache\n"
        "from tests.robustness.campaigns import build_campaign\n"
        f"build_campaign(Path({str(root)!r}), limit={STEP_LIMIT}, cache=StageCache(Path({str(cache_root)!r})),"
        " aggregate=False)\n"
    )


def _assert_published_outputs_complete(root: Path) -> None:
    """A step folder that has its _bpm.json holds every file of the step."""
    for folder in root.iterdir():
        if folder.is_dir() and (folder / META).exists():
            meta = json.loads((folder / META).read_text())
            assert meta.get("stage"), folder
            for path in folder.glob("*.jsonl"):
                data = path.read_bytes()
                assert data.endswith(b"\n"), path


@pytest.mark.parametrize("mode", ["after", "torn"])
def test_pipeline_steps_killed_at_seeded_points_resume_from_the_work_folder(steps_baseline: dict[str, Any],
                                                                            mode: str) -> None:
    root = steps_baseline["root"] / f"killed-{mode}"
    cache_root = root / "cache" / "stages"
    # The records of one chain: parse + source (N each), then per candidate the EditSet,
    # edited localization and judge records; kill points anywhere among them.
    (point,) = _kill_points(steps_baseline["records"], 1, f"steps-{mode}")
    rc = run_and_kill(_chain_code(root / "run", cache_root), mode=mode, at=point)
    assert rc == -9
    _assert_published_outputs_complete(root / "run")
    work = cache_root.parent / "work"
    assert work.is_dir()  # the killed stage's records wait in its work folder

    cache = StageCache(cache_root)
    build_campaign(root / "run", limit=STEP_LIMIT, cache=cache, aggregate=False)  # resume
    assert_jsonl_clean(root / "run")
    assert_jsonl_clean(cache_root)
    assert_same_scores(_judged(root / "run"), steps_baseline["judged"])
    assert not any(p for p in work.rglob("*") if p.is_file()), "finished steps leave no work behind"
    metas = {p.parent.name: json.loads(p.read_text()) for p in (root / "run").glob(f"*/{META}")}
    resumed = [m for m in metas.values() if m.get("stats", {}).get("reused")]
    hits = [e for e in cache.events() if e["hit"]]
    assert resumed or hits, "the resumed chain redid everything"


@pytest.mark.parametrize("after_copy", [0, 1], ids=["before-data", "after-data"])
def test_a_step_killed_while_publishing_never_leaves_a_half_output(steps_baseline: dict[str, Any],
                                                                   after_copy: int) -> None:
    root = steps_baseline["root"] / f"killed-publish-{after_copy}"
    cache_root = root / "cache" / "stages"
    target = root / "run" / "source"  # localize_source: its records, then its _bpm.json
    rc = run_and_kill(_chain_code(root / "run", cache_root), mode="publish", at=after_copy, publish_dir=target)
    assert rc == -9
    assert not (target / META).exists(), "the step's record was published before its data"
    _assert_published_outputs_complete(root / "run")
    build_campaign(root / "run", limit=STEP_LIMIT, cache=StageCache(cache_root), aggregate=False)
    assert_jsonl_clean(root / "run")
    assert_same_scores(_judged(root / "run"), steps_baseline["judged"])
