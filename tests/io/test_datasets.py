"""Datasets → EvalSet: every layout with known masks, S3 sources, bad input, subsets, streaming."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bpm_lib.cli import main
from bpm_lib.errors import DataError
from bpm_lib.io.datasets import (
    DATASETS,
    SkippedRecord,
    detect_layout,
    fetch,
    iter_json_array,
    iter_json_object,
    parse_source,
)
from bpm_lib.io.datasets.bpm_json import bpm_items_from_evalset, read_bpm_json, write_bpm_json
from bpm_lib.io.datasets.piebench import EDITING_TYPES, decode_mask, encode_mask, strip_markers
from bpm_lib.io.manifest import manifest_digest, read_evalset_info, read_manifest
from bpm_lib.types import Sample
from tests.fixtures import datasets as fx


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def _pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _mask(path: str | Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "L"
    arr = np.asarray(img)
    assert set(np.unique(arr)) <= {0, 255}
    return arr == 255


def _check_known(out: Path, sample: Sample, i: int, size: tuple[int, int] = fx.DEFAULT_SIZE) -> None:
    assert np.array_equal(_pixels(sample.source_image), fx.source_array(i, size))
    assert sample.reference_mask is not None
    assert np.array_equal(_mask(sample.reference_mask), fx.known_mask(i, size))
    assert sample.reference_edit is not None
    assert np.array_equal(_pixels(sample.reference_edit), fx.edited_array(fx.source_array(i, size), fx.known_mask(i, size)))


def _skipped(info: Any) -> dict[str, str]:
    return {s["id"]: s["error"] for s in info.skipped}


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("alpha", [False, True])
def test_magicbrush_parquet(tmp_path: Path, alpha: bool) -> None:
    src = fx.make_magicbrush_parquet(tmp_path / "mb" / "data" / "test-00000.parquet", 7, alpha_masks=alpha,
                                     row_group_size=3)
    out = tmp_path / "out"
    info = fetch(f"magicbrush:{src.parent.parent}", out)
    assert info.count == 7 and not info.skipped and info.edit_kinds == {"local": 7}
    samples = list(read_manifest(out / "manifest.jsonl"))
    assert [s.sample_id for s in samples] == [fx.magicbrush_id(i) for i in range(7)]
    for i, s in enumerate(samples):
        _check_known(out, s, i)
        assert s.instruction == fx.magicbrush_instruction(i) and s.edit_kind == "local"
        assert s.origin is not None and s.origin["dataset"] == "magicbrush" and s.origin["row"] == i
    line = _lines(out)[0]
    assert line["source_image"] == f"images/{fx.magicbrush_id(0)}/source.png"
    assert line["reference_mask"] == f"images/{fx.magicbrush_id(0)}/mask.png"
    assert info.digest == manifest_digest(out / "manifest.jsonl") == read_evalset_info(out).digest


def test_magicbrush_folder(tmp_path: Path) -> None:
    root = fx.make_magicbrush_folder(tmp_path / "mbtest", 6, alpha_masks=True)
    out = tmp_path / "out"
    info = fetch(f"magicbrush:{root}", out)
    assert info.count == 6
    samples = list(read_manifest(out / "manifest.jsonl"))
    assert [s.sample_id for s in samples] == [fx.magicbrush_id(i) for i in range(6)]
    for i, s in enumerate(samples):
        _check_known(out, s, i)
        assert s.origin is not None and s.origin["layout"] == "folder"


def test_piebench_masks_rle_border_and_global(tmp_path: Path) -> None:
    root = fx.make_piebench(tmp_path / "pie", 12)
    out = tmp_path / "out"
    info = fetch(f"pie-bench:{root}", out)
    assert info.count == 12 and info.edit_kinds == {"global": 1, "local": 11}
    assert info.edit_types["change style"] == 1 and sum(info.edit_types.values()) == 12
    samples = {s.sample_id: s for s in read_manifest(out / "manifest.jsonl")}
    for i in range(12):
        s = samples[fx.pie_id(i)]
        assert s.reference_mask is not None
        decoded = _mask(s.reference_mask)
        assert decoded.shape == (512, 512)
        assert np.array_equal(decoded, fx.expected_pie_mask(i))
        assert np.array_equal(_pixels(s.source_image), fx.smooth_array(i, fx.PIE_SIZE))
        assert s.edit_kind == ("global" if fx.pie_type(i) == "9" else "local")
        assert s.instruction == f"Change the cat {i} into a dog"
        assert s.origin is not None and s.origin["editing_type_id"] == fx.pie_type(i)
        assert s.origin["edit_type"] == EDITING_TYPES[fx.pie_type(i)]
        assert s.origin["original_prompt"] == f"a photo of a cat number {i}"
        assert s.origin["editing_prompt"] == f"a photo of a dog number {i}"
        assert s.reference_edit is None


def test_piebench_mask_codec_by_hand() -> None:
    # 4×5 image, runs (1,2) and (12,3) and a run clipped at the end (19, 10).
    mask = decode_mask([1, 2, 12, 3, 19, 10], (4, 5), border=False)
    expected = np.zeros(20, dtype=bool)
    expected[[1, 2, 12, 13, 14, 19]] = True
    assert np.array_equal(mask, expected.reshape(4, 5))
    with_border = decode_mask([], (4, 5))
    assert with_border.sum() == 14 and not with_border[1:3, 1:4].any()
    assert encode_mask(mask) == [1, 2, 12, 3, 19, 1]
    bad_masks: list[tuple[list[Any], str]] = [
        ([1], "even number"), ([1, -2], "negative"), ([20, 1], "outside"), ([1.5, 2], "integers")]
    for bad, needle in bad_masks:
        with pytest.raises(DataError, match=needle):
            decode_mask(bad, (4, 5))
    assert strip_markers("a [red]  [sports] car") == "a red sports car"


def test_bpm_json_keeps_candidates_and_round_trips(tmp_path: Path) -> None:
    src = fx.make_bpm_json(tmp_path / "ref", 5, k=3)
    out = tmp_path / "out"
    info = fetch(f"bpm-json:{src}", out)
    assert info.count == 5
    samples = list(read_manifest(out / "manifest.jsonl"))
    for i, s in enumerate(samples):
        assert s.sample_id == str(i) and s.reference_mask is None and s.edit_kind is None
        assert np.array_equal(_pixels(s.source_image), fx.source_array(i))
        assert s.origin is not None
        cands = s.origin["candidates"]
        assert sorted(cands) == ["1", "2", "3"]
        for c in (1, 2, 3):
            entry = cands[str(c)]
            assert entry["user_overall_quality"] == fx.bpm_rating(i, c)
            assert entry["image_path"] == f"model{c}/{i}.png"
            assert entry["image"] == str(out / "candidates" / str(c) / f"{i}.png")
            assert np.array_equal(_pixels(entry["image"]), fx.source_array(10_000 * c + i))
    editset = json.loads((out / "candidates" / "2" / "editset.json").read_text())
    assert editset["candidate"] == "2" and editset["editor"] == "precomputed"

    items = bpm_items_from_evalset(out / "manifest.jsonl",
                                   scores={("0", "1"): {"preservation": -0.5, "edit_quality": 0.25}})
    assert items[0]["index"] == 0 and items[0]["source_image_path"] == "images/0/source.png"
    assert items[0]["edited_image1"]["image_path"] == "candidates/1/0.png"
    assert items[0]["edited_image1"]["preservation"] == -0.5
    assert items[1]["edited_image3"]["user_overall_quality"] == fx.bpm_rating(1, 3)
    written = write_bpm_json(items, out / "rescored.json")
    assert read_bpm_json(written) == items
    again = tmp_path / "again"
    info2 = fetch(f"bpm-json:{written}", again)
    assert info2.count == 5
    for a, b in zip(samples, read_manifest(again / "manifest.jsonl"), strict=True):
        assert (a.sample_id, a.instruction) == (b.sample_id, b.instruction)
        assert np.array_equal(_pixels(a.source_image), _pixels(b.source_image))
        assert b.origin is not None and a.origin is not None
        for cand in ("1", "2", "3"):
            assert b.origin["candidates"][cand]["user_overall_quality"] == a.origin["candidates"][cand]["user_overall_quality"]
            assert np.array_equal(_pixels(a.origin["candidates"][cand]["image"]), _pixels(b.origin["candidates"][cand]["image"]))
    with pytest.raises(DataError, match="duplicate index"):
        write_bpm_json([items[0], items[0]], tmp_path / "dup.json")
    with pytest.raises(DataError, match="missing key"):
        write_bpm_json([{"index": 1}], tmp_path / "bad.json")


def test_jsonl_copies_images_and_keeps_origin(tmp_path: Path) -> None:
    m = fx.make_manifest(tmp_path / "hand", 4)
    out = tmp_path / "out"
    info = fetch(f"jsonl:{m}", out)
    assert info.count == 4
    for i, s in enumerate(read_manifest(out / "manifest.jsonl")):
        assert s.source_image.startswith(str(out))
        _check_known(out, s, i)
        assert s.origin == {"dataset": "handmade", "id": i}
    # A fetched EvalSet is itself a manifest: fetching it again gives the same content digest.
    again = fetch(f"jsonl:{out}", tmp_path / "again")
    assert again.digest == info.digest


# --------------------------------------------------------------------------- sources and S3


def test_parse_source_and_detect_layout(tmp_path: Path) -> None:
    assert parse_source("demo") == ("demo", None)
    assert parse_source("magicbrush:/data/mb") == ("magicbrush", "/data/mb")
    assert parse_source("pie-bench:s3://b/pie") == ("pie-bench", "s3://b/pie")
    assert parse_source("s3://b/x") == (None, "s3://b/x")
    with pytest.raises(ValueError, match="did you mean 'magicbrush'"):
        parse_source("magicbrsh:/x")
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_source("no-such-thing")
    assert DATASETS.names() == ["bpm-json", "demo", "jsonl", "magicbrush", "pie-bench"]
    assert detect_layout(fx.make_magicbrush_folder(tmp_path / "a", 1)) == "magicbrush"
    assert detect_layout(fx.make_magicbrush_parquet(tmp_path / "b" / "d" / "x.parquet", 1).parent.parent) == "magicbrush"
    assert detect_layout(tmp_path / "b" / "d" / "x.parquet") == "magicbrush"
    assert detect_layout(fx.make_piebench(tmp_path / "c", 1)) == "pie-bench"
    assert detect_layout(fx.make_bpm_json(tmp_path / "d", 1)) == "bpm-json"
    assert detect_layout(tmp_path / "d") == "bpm-json"
    assert detect_layout(fx.make_manifest(tmp_path / "e", 1).parent) == "jsonl"
    (tmp_path / "f").mkdir()
    with pytest.raises(DataError, match="cannot tell"):
        detect_layout(tmp_path / "f")
    with pytest.raises(ValueError, match="needs a path"):
        fetch("magicbrush", tmp_path / "out")


def _upload(client: Any, bucket: str, local: Path, prefix: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(local).as_posix()}", Body=p.read_bytes())


def test_s3_sources_are_cached_and_detected(s3_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path / "cache"))
    client = s3_env.client()
    client.create_bucket(Bucket="datasets")
    _upload(client, "datasets", fx.make_piebench(tmp_path / "pie", 4), "pie")
    _upload(client, "datasets", fx.make_magicbrush_parquet(tmp_path / "mb" / "t.parquet", 3).parent, "mb")
    _upload(client, "datasets", fx.make_bpm_json(tmp_path / "ref", 2, k=2).parent, "ref")

    info = fetch("s3://datasets/pie", tmp_path / "o1")
    assert info.count == 4 and info.params["dataset"] == "pie-bench"
    s = next(read_manifest(tmp_path / "o1" / "manifest.jsonl"))
    assert s.reference_mask is not None and np.array_equal(_mask(s.reference_mask), fx.expected_pie_mask(0))
    assert fetch("magicbrush:s3://datasets/mb/t.parquet", tmp_path / "o2").count == 3
    assert fetch("s3://datasets/ref/", tmp_path / "o3").params["dataset"] == "bpm-json"
    assert len(list((tmp_path / "cache" / "s3").iterdir())) == 3
    with pytest.raises(DataError, match=r"'\.\.' segment"):
        fetch("s3://datasets/pie/../mb", tmp_path / "o4")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("maker", "defect", "field"),
    [
        ("parquet", "corrupt_source", "source_img"),
        ("parquet", "missing_source", "source_img"),
        ("parquet", "wrong_size_mask", "does not match the image size"),
        ("parquet", "missing_instruction", "instruction"),
        ("folder", "corrupt_source", "input"),
        ("folder", "missing_source", "file not found"),
        ("folder", "wrong_size_mask", "mask"),
        ("folder", "escape_source", "path escapes"),
        ("folder", "absolute_source", "absolute paths are not allowed"),
        ("pie", "corrupt_source", "image_path"),
        ("pie", "missing_source", "file not found"),
        ("pie", "wrong_size_mask", "does not match the image size"),
        ("pie", "escape_source", "image_path: path escapes"),
        ("pie", "unknown_type", "unknown editing_type_id '12'"),
        ("pie", "missing_instruction", "editing_instruction"),
        ("bpm", "corrupt_source", "source_image_path"),
        ("bpm", "escape_source", "source_image_path: path escapes"),
        ("bpm", "absolute_source", "source_image_path: absolute"),
        ("bpm", "missing_instruction", "missing key(s) ['instruction']"),
        ("jsonl", "wrong_size_mask", "reference_mask"),
        ("jsonl", "escape_source", "source_image: path escapes"),
        ("jsonl", "absolute_source", "absolute path"),
        ("jsonl", "unknown_key", "unknown key(s) ['colour']"),
        ("jsonl", "duplicate_id", "duplicate sample_id 's0'"),
    ],
)
def test_bad_record_is_skipped_and_reported(tmp_path: Path, maker: str, defect: str, field: str) -> None:
    n, bad_i = 4, 2
    makers = {
        "parquet": lambda: f"magicbrush:{fx.make_magicbrush_parquet(tmp_path / 'src' / 'x.parquet', n, bad={bad_i: defect})}",
        "folder": lambda: f"magicbrush:{fx.make_magicbrush_folder(tmp_path / 'src', n, bad={bad_i: defect})}",
        "pie": lambda: f"pie-bench:{fx.make_piebench(tmp_path / 'src', n, bad={bad_i: defect})}",
        "bpm": lambda: f"bpm-json:{fx.make_bpm_json(tmp_path / 'src', n, k=2, bad={bad_i: defect})}",
        "jsonl": lambda: f"jsonl:{fx.make_manifest(tmp_path / 'src', n, bad={bad_i: defect})}",
    }
    out = tmp_path / "out"
    info = fetch(makers[maker](), out)
    assert info.count == n - 1
    assert len(info.skipped) == 1
    (error,) = info.skipped
    assert field in error["error"], error
    assert json.loads((out / "evalset.json").read_text())["skipped"] == [error]
    assert len(_lines(out)) == n - 1
    assert info.digest == manifest_digest(out / "manifest.jsonl")  # the others are intact and complete
    assert not (tmp_path / "outside.png").exists()


def test_symlinked_image_out_of_root_is_skipped(tmp_path: Path) -> None:
    root = fx.make_magicbrush_folder(tmp_path / "src", 3)
    secret = tmp_path / "secret.png"
    secret.write_bytes(fx.png_bytes(fx.source_array(99)))
    img_id, turn = fx.magicbrush_id(1).split("-")
    victim = root / "images" / img_id / f"{img_id}-input{turn}.png"
    victim.unlink()
    victim.symlink_to(secret)
    info = fetch(f"magicbrush:{root}", tmp_path / "out")
    assert info.count == 2
    assert "resolves outside" in _skipped(info)[fx.magicbrush_id(1)]


def test_every_record_failing_raises_and_keeps_old_output(tmp_path: Path) -> None:
    good = fetch(f"jsonl:{fx.make_manifest(tmp_path / 'ok', 2)}", tmp_path / "out")
    bad_src = fx.make_manifest(tmp_path / "bad", 3, bad={0: "escape_source", 1: "unknown_key", 2: "absolute_source"})
    with pytest.raises(DataError, match=r"no record could be fetched \(3 skipped"):
        fetch(f"jsonl:{bad_src}", tmp_path / "out")
    assert read_evalset_info(tmp_path / "out") == good  # untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging leftovers
    rc = main(["data", "fetch", f"jsonl:{bad_src}", "--out", str(tmp_path / "cli"), "--no-progress"])
    assert rc == 1 and not (tmp_path / "cli").exists()


def test_refuses_to_overwrite_a_folder_that_is_not_an_evalset(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="not an EvalSet"):
        fetch("demo", tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").exists()


def test_truncated_json_is_a_clear_error(tmp_path: Path) -> None:
    path = fx.make_bpm_json(tmp_path / "src", 3, k=1)
    path.write_text(path.read_text()[:-30])
    with pytest.raises(DataError, match="malformed JSON"):
        fetch(f"bpm-json:{path}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- subsets


def test_limit_seed_deterministic_and_order_independent(tmp_path: Path) -> None:
    root = fx.make_piebench(tmp_path / "pie", 30)

    def ids(out: str, **kw: Any) -> list[str]:
        fetch(f"pie-bench:{root}", tmp_path / out, **kw)
        return [ln["sample_id"] for ln in _lines(tmp_path / out)]

    a = ids("a", limit=8, seed=1)
    assert len(a) == 8 and a == ids("b", limit=8, seed=1)
    assert set(a) != set(ids("c", limit=8, seed=2))
    assert set(ids("d", limit=3, seed=1)) <= set(a)  # a smaller limit is a subset of a larger one
    assert a == sorted(a)  # the subset keeps the dataset order
    # Reversing the dataset does not change which records are picked.
    mapping = dict(iter_json_object(root / "mapping_file.json"))
    (root / "mapping_file.json").write_text(json.dumps(dict(reversed(list(mapping.items())))))
    assert set(ids("e", limit=8, seed=1)) == set(a)
    assert len(ids("f", limit=100)) == 30
    with pytest.raises(ValueError, match="limit"):
        fetch(f"pie-bench:{root}", tmp_path / "g", limit=0)
    with pytest.raises(ValueError, match="stratify"):
        fetch(f"pie-bench:{root}", tmp_path / "g", stratify="colour")


def test_stratify_balances_edit_types(tmp_path: Path) -> None:
    root = fx.make_piebench(tmp_path / "pie", 40)  # 4 records of each of the 10 types
    info = fetch(f"pie-bench:{root}", tmp_path / "out", limit=20, seed=3, stratify="edit-type")
    assert info.count == 20
    assert sorted(info.edit_types.values()) == [2] * 10
    plain = fetch(f"pie-bench:{root}", tmp_path / "plain", limit=20, seed=3)
    assert plain.count == 20  # without stratify the counts follow the random ranks
    # A stratum with too few records leaves its share to the others.
    small = fetch(f"pie-bench:{root}", tmp_path / "small", limit=35, seed=3, stratify="edit-type")
    assert small.count == 35 and max(small.edit_types.values()) == 4


# --------------------------------------------------------------------------- streaming


def test_json_streaming_reader_handles_chunk_boundaries(tmp_path: Path) -> None:
    items = [{"n": i, "s": "x" * (i * 37 % 5000), "num": 12345678901234567890 + i, "u": "ü"} for i in range(200)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    assert list(iter_json_array(path)) == items
    obj = {str(i): [i, 1.5e10, None] for i in range(300)}
    (tmp_path / "o.json").write_text(json.dumps(obj, indent=3))
    assert dict(iter_json_object(tmp_path / "o.json")) == obj
    (tmp_path / "n.json").write_text("[1, 22, 333]")
    assert list(iter_json_array(tmp_path / "n.json")) == [1, 22, 333]
    (tmp_path / "e.json").write_text("[] ")
    assert list(iter_json_array(tmp_path / "e.json")) == []
    (tmp_path / "t.json").write_text("[1] [2]")
    with pytest.raises(DataError, match="trailing data"):
        list(iter_json_array(tmp_path / "t.json"))
    with pytest.raises(DataError, match="expected a JSON list"):
        list(iter_json_array(tmp_path / "o.json"))


def _peak(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _drain(source: str) -> None:
    """Stream every record of a source and read its images, keeping nothing."""
    from bpm_lib.io.images import load_rgb

    name, path = parse_source(source)
    assert name is not None and path is not None
    for rec in DATASETS.create(name).records(Path(path)):
        assert not isinstance(rec, SkippedRecord), rec
        load_rgb(rec.load().source.read())


def test_loaders_stream_parquet_row_groups_and_json_items(tmp_path: Path) -> None:
    small_pq = f"magicbrush:{fx.make_magicbrush_parquet(tmp_path / 'p100' / 'x.parquet', 100)}"
    big_pq = f"magicbrush:{fx.make_magicbrush_parquet(tmp_path / 'p2000' / 'x.parquet', 2000)}"
    _drain(small_pq)  # warm-up: imports and caches
    small, big = _peak(lambda: _drain(small_pq)), _peak(lambda: _drain(big_pq))
    # Holding the 2,000 records' decoded images would take ~30 MB (3 × ~5 KB PNG each).
    assert big < small + 1_000_000, (small, big)

    # JSON layouts: metadata of 100 vs 2,000 PIE-Bench entries (each with an RLE mask list).
    def mapping(n: int) -> Path:
        root = tmp_path / f"pie{n}"
        root.mkdir()
        with (root / "mapping_file.json").open("w") as fh:
            json.dump({fx.pie_id(i): fx.pie_entry(i) for i in range(n)}, fh)
        return root

    def meta(root: Path) -> None:
        for rec in DATASETS.create("pie-bench").records(root, wanted=frozenset()):
            assert not isinstance(rec, SkippedRecord)

    r100, r2000 = mapping(100), mapping(2000)
    meta(r100)
    small, big = _peak(lambda: meta(r100)), _peak(lambda: meta(r2000))
    assert big < small + 500_000, (small, big)


@pytest.mark.slow
def test_fetch_memory_stays_flat_from_100_to_2000_samples(tmp_path: Path) -> None:
    small_src = f"magicbrush:{fx.make_magicbrush_parquet(tmp_path / 'p100' / 'x.parquet', 100, size=(32, 32))}"
    big_src = f"magicbrush:{fx.make_magicbrush_parquet(tmp_path / 'p2000' / 'x.parquet', 2000, size=(32, 32))}"
    fetch(small_src, tmp_path / "warm")  # imports and caches happen once, outside the measurement
    small = _peak(lambda: fetch(small_src, tmp_path / "o100"))
    big = _peak(lambda: fetch(big_src, tmp_path / "o2000"))
    assert read_evalset_info(tmp_path / "o2000").count == 2000
    # The 2,000 records hold ~3 × 3 KB of incompressible image bytes each (≈ 18 MB): anything
    # retained per record would show. Per-record bookkeeping (ids) is ~200 KB.
    assert big < small + 1_500_000, (small, big)


def test_stratify_uses_the_rules_parser_without_dataset_edit_types(tmp_path: Path) -> None:
    pytest.importorskip("bpm_lib.backends.rules")
    from bpm_lib.io.datasets.demo import SCENES

    local = [s.instruction for s in SCENES if s.edit_type in ("remove", "replace", "change size")]
    path = fx.make_bpm_json(tmp_path / "ref", 36, k=1)
    items = json.loads(path.read_text())
    for i, item in enumerate(items):
        item["instruction"] = local[i % len(local)]  # remove ×2, replace ×2, change size ×2 phrasings
    path.write_text(json.dumps(items))
    fetch(f"bpm-json:{path}", tmp_path / "out", limit=9, seed=0, stratify="edit-type")
    kinds = [ln["instruction"].split()[0] for ln in _lines(tmp_path / "out")]
    assert sorted(kinds.count(k) for k in ("Remove", "Replace", "Make")) == [3, 3, 3]


def test_output_folder_that_cannot_be_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import bpm_lib.io.datasets as ds

    src = fx.make_manifest(tmp_path / "src", 3)
    out = tmp_path / "mounted"
    first = fetch(f"jsonl:{src}", out, limit=2)
    real_rename = os.rename

    def rename(a: Any, b: Any) -> None:
        if Path(a) == out:  # like a mount point: it cannot be moved away
            raise OSError(16, "Device or resource busy")
        real_rename(a, b)

    monkeypatch.setattr(ds.os, "rename", rename)
    info = fetch(f"jsonl:{src}", out)
    assert info.count == 3 and first.count == 2
    assert read_evalset_info(out) == info and info.digest == manifest_digest(out / "manifest.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted", "src"]
    # A parent folder that is not writable: the stage lives inside the output folder.
    monkeypatch.setattr(ds.os, "access", lambda path, mode: Path(path) != tmp_path)
    info = fetch(f"jsonl:{src}", out, limit=1)
    assert info.count == 1 and len(_lines(out)) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted", "src"]
