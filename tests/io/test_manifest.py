"""The EvalSet manifest contract: validation, path confinement, streaming, digest, info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bpm_lib.errors import DataError
from bpm_lib.io.manifest import (
    EVALSET_INFO_NAME,
    EvalSetInfo,
    ManifestError,
    describe_evalset,
    iter_manifest,
    manifest_digest,
    read_evalset_info,
    read_manifest,
    write_manifest,
)
from bpm_lib.types import Sample


def _line(sid: Any = "a", **kw: Any) -> dict[str, Any]:
    base = {"sample_id": sid, "instruction": "make the ball blue", "source_image": f"img/{sid}.png"}
    base.update(kw)
    return base


def _write(path: Path, lines: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines),
                    encoding="utf-8")
    return path


def _images(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"bytes of {name}".encode())


def test_read_resolves_relative_paths(tmp_path: Path) -> None:
    m = _write(tmp_path / "set" / "manifest.jsonl", [
        _line("a", reference_mask="img/a_mask.png", edit_kind="local", origin={"dataset": "x", "id": 1}),
        "",
        _line("b", edited_image="s3://bkt/edits/b.png",
              origin={"candidates": {"1": {"image": "cand/b.png", "user_overall_quality": 3}}}),
    ])
    samples = list(read_manifest(m))
    assert [s.sample_id for s in samples] == ["a", "b"]
    a, b = samples
    assert a.source_image == str(tmp_path / "set" / "img" / "a.png")
    assert a.reference_mask == str(tmp_path / "set" / "img" / "a_mask.png")
    assert a.edit_kind == "local" and a.origin == {"dataset": "x", "id": 1}
    assert b.edited_image == "s3://bkt/edits/b.png"
    assert b.origin is not None and b.origin["candidates"]["1"]["image"] == str(tmp_path / "set" / "cand" / "b.png")
    assert b.origin["candidates"]["1"]["user_overall_quality"] == 3
    raw = list(read_manifest(m, resolve=False))
    assert raw[0].source_image == "img/a.png"
    other = list(read_manifest(m, root=tmp_path / "elsewhere"))
    assert other[0].source_image == str(tmp_path / "elsewhere" / "img" / "a.png")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (_line(colour="red"), "unknown key(s) ['colour']"),
        ({"sample_id": "a", "instruction": "x"}, "missing required key(s) ['source_image']"),
        (_line(instruction=""), "missing required key(s) ['instruction']"),
        (_line(source_image="../outside.png"), "source_image: path escapes"),
        (_line(reference_mask="img/../../x.png"), "reference_mask: path escapes"),
        (_line(source_image="/etc/passwd"), "absolute path '/etc/passwd' is not allowed"),
        (_line(source_image="s3://bkt/a/../../b.png"), "'..' segment"),
        (_line(source_image="s3:///x.png"), "empty bucket"),
        (_line(source_image="http://host/x.png"), "unsupported URI scheme"),
        (_line(edited_image=5), "edited_image must be a path string"),
        (_line(edit_kind="regional"), "edit_kind must be"),
        (_line(origin=[1]), "origin must be an object"),
        (_line(origin={"candidates": {"1": {"image": "../../x.png"}}}), "origin.candidates.1.image"),
        (_line(sid="../evil"), "cannot be used as a file name"),
        (_line(sid="a/b"), "cannot be used as a file name"),
        (_line(sid=" padded"), "whitespace"),
        (_line(sid=7), "sample_id must be a non-empty string"),
        ("[1, 2]", "expected a JSON object"),
        ('{"sample_id": "a",', "not valid JSON"),
    ],
)
def test_bad_lines_name_line_and_problem(tmp_path: Path, line: Any, needle: str) -> None:
    m = _write(tmp_path / "manifest.jsonl", [_line("ok"), line])
    with pytest.raises(DataError) as info:
        list(read_manifest(m))
    message = str(info.value)
    assert "manifest.jsonl:2:" in message
    assert needle in message


def test_absolute_paths_allowed_on_request(tmp_path: Path) -> None:
    image = tmp_path / "abs.png"
    m = _write(tmp_path / "m" / "manifest.jsonl", [_line("a", source_image=str(image))])
    with pytest.raises(DataError, match="absolute"):
        list(read_manifest(m))
    assert next(read_manifest(m, allow_absolute=True)).source_image == str(image)


def test_symlink_out_of_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "link.png").symlink_to(tmp_path / "secret.png")
    m = _write(tmp_path / "set" / "manifest.jsonl", [_line("a", source_image="link.png")])
    with pytest.raises(DataError, match=r"source_image: path 'link.png' resolves outside"):
        list(read_manifest(m))


def test_duplicates_name_both_lines_and_collect_mode_continues(tmp_path: Path) -> None:
    m = _write(tmp_path / "manifest.jsonl", [_line("a"), _line("b"), _line("a"), _line("c", colour=1), _line("d")])
    with pytest.raises(DataError, match=r"manifest.jsonl:3: duplicate sample_id 'a' \(first on line 1\)"):
        list(read_manifest(m))
    items = list(iter_manifest(m, on_error="collect"))
    assert [type(i).__name__ for i in items] == ["Sample", "Sample", "ManifestError", "ManifestError", "Sample"]
    dup, unknown = items[2], items[3]
    assert isinstance(dup, ManifestError) and dup.line == 3 and dup.sample_id == "a"
    assert isinstance(unknown, ManifestError) and unknown.sample_id == "c" and "colour" in unknown.message
    assert unknown.to_dict()["line"] == 4
    with pytest.raises(ValueError, match="on_error"):
        iter_manifest(m, on_error="ignore")  # type: ignore[call-overload]


def test_reading_streams_one_line_at_a_time(tmp_path: Path) -> None:
    # Good lines are yielded before a later bad line is even read.
    m = _write(tmp_path / "manifest.jsonl", [_line(f"s{i}") for i in range(3)] + ["not json"])
    it = read_manifest(m)
    assert [next(it).sample_id for _ in range(3)] == ["s0", "s1", "s2"]
    with pytest.raises(DataError, match=":4: not valid JSON"):
        next(it)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest not found"):
        list(read_manifest(tmp_path / "nope.jsonl"))


def test_write_manifest_round_trip_relative_and_atomic(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    samples = [
        Sample("a", "make it red", str(folder / "img" / "a.png"), reference_mask=str(folder / "m" / "a.png"),
               edit_kind="local", origin={"candidates": {"x": {"image": str(folder / "c" / "a.png")}}}),
        Sample("b", "remove the car", "s3://bkt/b.png"),
    ]
    out = write_manifest(folder / "manifest.jsonl", iter(samples))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["source_image"] == "img/a.png" and lines[0]["reference_mask"] == "m/a.png"
    assert lines[0]["origin"]["candidates"]["x"]["image"] == "c/a.png"
    assert lines[1]["source_image"] == "s3://bkt/b.png"
    assert list(read_manifest(out)) == samples

    before = out.read_bytes()
    with pytest.raises(DataError, match="duplicate sample_id 'a'"):
        write_manifest(out, [samples[0], samples[0]])
    assert out.read_bytes() == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(TypeError, match="Sample"):
        write_manifest(out, [{"sample_id": "a"}])  # type: ignore[list-item]


def test_digest_covers_manifest_and_image_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    _images(folder, "img/a.png", "img/b.png", "img/b_mask.png", "cand/b.png")
    m = _write(folder / "manifest.jsonl", [
        _line("a", edit_kind="global"),
        _line("b", reference_mask="img/b_mask.png", edit_kind="local",
              origin={"edit_type": "replace", "candidates": {"1": {"image": "cand/b.png"}}}),
    ])
    d1 = manifest_digest(m)
    assert d1.startswith("sha256:") and len(d1) == len("sha256:") + 64
    assert manifest_digest(m) == d1
    (folder / "cand" / "b.png").write_bytes(b"changed")  # a candidate image counts too
    d2 = manifest_digest(m)
    assert d2 != d1
    (folder / "img" / "b_mask.png").write_bytes(b"changed mask")
    assert manifest_digest(m) not in (d1, d2)
    d3 = manifest_digest(m)
    m.write_text(m.read_text().replace("make the ball blue", "make the ball green"))
    assert manifest_digest(m) != d3
    (folder / "img" / "a.png").unlink()
    with pytest.raises(DataError, match="source_image: file not found"):
        manifest_digest(m)


def test_describe_and_read_evalset_info(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    _images(folder, "img/a.png", "img/b.png", "img/c.png")
    m = _write(folder / "manifest.jsonl", [
        _line("a", edit_kind="global", origin={"edit_type": "global"}),
        _line("b", edit_kind="local", origin={"edit_type": "replace"}),
        _line("c", edit_kind="local", origin={"edit_type": "replace"}),
    ])
    info = describe_evalset(m, name="tiny", source="jsonl:x", params={"limit": 3},
                            skipped=[{"id": "z", "error": "bad"}])
    assert info.count == 3 and info.edit_kinds == {"global": 1, "local": 2}
    assert info.edit_types == {"global": 1, "replace": 2}
    assert info.digest == manifest_digest(m) and info.path == str(m.resolve())
    stored = json.loads((folder / EVALSET_INFO_NAME).read_text())
    assert stored["path"] == "manifest.jsonl" and stored["skipped"] == [{"id": "z", "error": "bad"}]
    assert read_evalset_info(folder) == info
    assert read_evalset_info(m) == info
    assert EvalSetInfo.from_dict(info.to_dict()) == info
    with pytest.raises(ValueError, match="unknown keys"):
        EvalSetInfo.from_dict({**info.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="digest"):
        EvalSetInfo(name="x", path="p", count=0, digest="md5:1")
    with pytest.raises(DataError, match="not an EvalSet"):
        read_evalset_info(tmp_path)


def test_s3_manifest_relative_paths_become_uris(s3_env: Any) -> None:
    client = s3_env.client()
    client.create_bucket(Bucket="manifests")
    body = json.dumps(_line("a", reference_mask="masks/a.png")) + "\n"
    client.put_object(Bucket="manifests", Key="sets/one/manifest.jsonl", Body=body.encode())
    (sample,) = list(read_manifest("s3://manifests/sets/one/manifest.jsonl"))
    assert sample.source_image == "s3://manifests/sets/one/img/a.png"
    assert sample.reference_mask == "s3://manifests/sets/one/masks/a.png"
    bad = json.dumps(_line("b", source_image="../../../x.png")) + "\n"
    client.put_object(Bucket="manifests", Key="sets/two/manifest.jsonl", Body=bad.encode())
    with pytest.raises(DataError, match="escapes"):
        list(read_manifest("s3://manifests/sets/two/manifest.jsonl"))
