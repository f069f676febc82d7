"""Editors (ip2p on a tiny random pipeline, openai over real HTTP, precomputed), checkpoint
URIs (local, s3:// on moto, models:/ and runs:/ on a real MLflow server), the generate
runner (seeds, resume, error isolation, mask guidance) and ``bpm edit``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bpm_lib.backends.base import EDITORS
from bpm_lib.backends.editors import (
    EditError,
    InstructPix2PixEditor,
    OpenAIImageEditor,
    PrecomputedEditor,
    blend_with_mask,
    dilate_mask,
    ip2p_resolution,
    mask_to_openai_png,
)
from bpm_lib.cli import main
from bpm_lib.errors import ConfigError, DataError, ModelLoadError
from bpm_lib.io.editset import EditSet, EditSetWriter
from bpm_lib.io.model_uri import (
    DIGEST_FILE,
    checkpoint_digest,
    parse_models_uri,
    resolve_checkpoint,
)
from bpm_lib.runner.generate import (
    SEED_SCHEME,
    MaskGuidance,
    derive_seed,
    generate_edits,
    load_masks_jsonl,
)
from bpm_lib.types import Sample
from tests.fixtures.servers import free_port
from tests.fixtures.tiny_ip2p import save_tiny_ip2p

STEPS = 2


# --------------------------------------------------------------------------- helpers


def _rgb(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _samples(root: Path, n: int = 3, size: tuple[int, int] = (72, 56), masks: bool = False) -> list[Sample]:
    """Samples with source images (and optional reference masks) written under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        sid = f"s{i}"
        _rgb(100 + i, size).save(root / f"{sid}.png")
        mask_path = None
        if masks:
            m = np.zeros((size[1], size[0]), dtype=bool)
            m[10 + i : 20 + i, 15:30] = True
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(root / f"{sid}_mask.png")
            mask_path = str(root / f"{sid}_mask.png")
        out.append(Sample(sid, f"make object {i} blue", str(root / f"{sid}.png"), reference_mask=mask_path))
    return out


class RecordingEditor:
    """A deterministic in-test editor: fills the image with a colour from the seed; fails
    for ids in ``fail``; records calls (and the masks it was given)."""

    name = "recording"

    def __init__(self, fail: set[str] | None = None, accepts_mask: bool = False) -> None:
        self.fail = fail or set()
        self.accepts_mask = accepts_mask
        self.calls: list[tuple[str, int]] = []
        self.masks: dict[str, np.ndarray] = {}

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": 1}

    def edit(self, sample: Sample, image: Image.Image, *, seed: int, mask: np.ndarray | None = None) -> Image.Image:
        self.calls.append((sample.sample_id, seed))
        if mask is not None:
            self.masks[sample.sample_id] = mask
        if sample.sample_id in self.fail:
            raise RuntimeError(f"editor exploded on {sample.sample_id}")
        colour = tuple(int(b) for b in seed.to_bytes(8, "big")[:3])
        return Image.new("RGB", image.size, colour)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    # The CI box is shared: one intra-op thread is much faster than two fighting for cores.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    return save_tiny_ip2p(tmp_path_factory.mktemp("ip2p") / "ckpt")


@pytest.fixture(scope="module")
def ip2p(tiny_ckpt: Path) -> InstructPix2PixEditor:
    editor = EDITORS.create("ip2p", checkpoint=str(tiny_ckpt), num_inference_steps=STEPS, device="cpu")
    assert isinstance(editor, InstructPix2PixEditor)
    return editor


def _edit_bytes(editor: Any, image: Image.Image, seed: int, sid: str = "s0") -> bytes:
    return _png(editor.edit(Sample(sid, "turn the sky red", "unused.png"), image, seed=seed))


# --------------------------------------------------------------------------- ip2p


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((512, 512), 512, (512, 512)),
        ((100, 70), 512, (128, 64)),  # never scaled up; 70/64 rounds to one multiple
        ((1024, 768), 512, (512, 384)),
        ((500, 375), 512, (512, 384)),
        ((4000, 10), 512, (512, 64)),
        ((20, 20), 256, (64, 64)),
        ((1000, 600), 256, (256, 128)),  # 153.6 → 128
    ],
)
def test_ip2p_resolution(size: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    w, h = ip2p_resolution(*size, max_side)
    assert (w, h) == expected
    assert w % 64 == 0 and h % 64 == 0 and max(w, h) <= max_side


def test_ip2p_resolution_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="max_side"):
        ip2p_resolution(100, 100, 500)
    with pytest.raises(ValueError, match="size must be positive"):
        ip2p_resolution(0, 100)


@pytest.mark.slow  # loads diffusers + the tiny pipeline
def test_ip2p_edits_at_source_size_and_is_seed_reproducible(ip2p: InstructPix2PixEditor, tiny_ckpt: Path) -> None:
    source = _rgb(1, (80, 56))  # not a multiple of 64: edited at 64×64, returned at 80×56
    out = ip2p.edit(Sample("s0", "turn the sky red", "unused.png"), source, seed=7)
    assert out.size == (80, 56) and out.mode == "RGB"
    assert ip2p.sample_settings(source) == {"resolution": [64, 64]}
    first = _edit_bytes(ip2p, source, seed=7)
    assert _png(out) == first
    assert _edit_bytes(ip2p, source, seed=7) == first
    assert _edit_bytes(ip2p, source, seed=8) != first
    ident = ip2p.identity()
    assert ident["digest"] == checkpoint_digest(tiny_ckpt)
    assert ident["checkpoint"] == str(tiny_ckpt)
    assert ident["num_inference_steps"] == STEPS and ident["device"] == "cpu" and ident["dtype"] == "float32"
    assert ident["scheduler"] == "PNDMScheduler"
    json.dumps(ident)  # JSON-able


@pytest.mark.slow  # loads diffusers + the tiny pipeline
def test_ip2p_scheduler_option(tiny_ckpt: Path) -> None:
    editor = InstructPix2PixEditor(str(tiny_ckpt), num_inference_steps=1, scheduler="euler_ancestral", device="cpu")
    assert type(editor._pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert editor.identity()["scheduler"] == "euler_ancestral"
    assert editor.edit(Sample("s", "x", "u.png"), _rgb(2, (64, 64)), seed=1).size == (64, 64)
    with pytest.raises(ValueError, match="did you mean 'euler_ancestral'"):
        InstructPix2PixEditor(str(tiny_ckpt), scheduler="euler_ancestrl", device="cpu")


@pytest.mark.slow  # loads diffusers + the tiny pipeline
def test_ip2p_rejects_bad_settings_and_missing_checkpoints(tmp_path: Path, tiny_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="num_inference_steps"):
        InstructPix2PixEditor(str(tiny_ckpt), num_inference_steps=0)
    with pytest.raises(ValueError, match="image_guidance_scale"):
        InstructPix2PixEditor(str(tiny_ckpt), image_guidance_scale=0.5)
    with pytest.raises(ModelLoadError, match="does not exist"):
        InstructPix2PixEditor(str(tmp_path / "nope"), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("not a pipeline")
    with pytest.raises(ModelLoadError, match="cannot be loaded"):
        InstructPix2PixEditor(str(empty), device="cpu")
    with pytest.raises(ModelLoadError, match="not available"):
        InstructPix2PixEditor("someone/not-cached-ip2p", device="cpu")  # HF_HUB_OFFLINE=1 in tests


# --------------------------------------------------------------------------- checkpoint URIs


def test_resolve_checkpoint_forms(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model_index.json").write_text("{}")
    local = resolve_checkpoint(str(ckpt))
    assert local.kind == "local" and local.local_path == str(ckpt)
    assert local.digest == checkpoint_digest(ckpt) and local.digest.startswith("sha256:")
    assert resolve_checkpoint(f"file://{ckpt}").digest == local.digest
    assert resolve_checkpoint(ckpt).uri == str(ckpt)  # a Path works too
    hub = resolve_checkpoint("timbrooks/instruct-pix2pix")
    assert (hub.kind, hub.local_path, hub.digest, hub.is_local) == ("hub", "timbrooks/instruct-pix2pix", None, False)
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_checkpoint("./definitely-missing-ckpt")
    with pytest.raises(ValueError, match="unsupported scheme 'gs'"):
        resolve_checkpoint("gs://bucket/ckpt")
    with pytest.raises(ValueError, match="neither an existing local path nor a hub id"):
        resolve_checkpoint("not a hub id!")
    with pytest.raises(ValueError, match="uri"):
        resolve_checkpoint("  ")


def test_parse_models_uri() -> None:
    assert parse_models_uri("models:/ip2p/3") == ("ip2p", "3", None, None)
    assert parse_models_uri("models:/ip2p@champion") == ("ip2p", None, "champion", None)
    assert parse_models_uri("models:/ip2p/3/unet") == ("ip2p", "3", None, "unet")
    with pytest.raises(ValueError, match="deprecated"):
        parse_models_uri("models:/ip2p/Production")
    with pytest.raises(ValueError, match="models:/<name>"):
        parse_models_uri("models:/ip2p")


def test_digest_is_content_only_and_cached_by_size_and_mtime(tmp_path: Path) -> None:
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "w.bin").write_bytes(b"weights-1")
    (a / "sub" / "config.json").write_text('{"x": 1}')
    b = tmp_path / "b"
    (b / "sub").mkdir(parents=True)
    (b / "sub" / "config.json").write_text('{"x": 1}')
    (b / "w.bin").write_bytes(b"weights-1")
    (b / ".gitattributes").write_text("hidden files are not content")

    d = checkpoint_digest(a)
    assert d == checkpoint_digest(b)  # same files, other folder, other creation order
    assert (a / DIGEST_FILE).is_file()
    expected = hashlib.sha256()
    for rel, data in (("sub/config.json", b'{"x": 1}'), ("w.bin", b"weights-1")):
        expected.update(len(rel).to_bytes(8, "big") + rel.encode() + len(data).to_bytes(8, "big") + data)
    assert d == f"sha256:{expected.hexdigest()}"

    (a / "sub" / "config.json").write_text('{"x": 2}')  # same size, new mtime → recomputed
    d2 = checkpoint_digest(a)
    assert d2 != d
    (a / "w.bin").rename(a / "v.bin")  # a renamed file changes the digest
    assert checkpoint_digest(a) not in (d, d2)

    # The cache is trusted while sizes and mtimes match (that is what makes it cheap).
    cached = checkpoint_digest(b)
    st = (b / "w.bin").stat()
    (b / "w.bin").write_bytes(b"weights-2")
    os.utime(b / "w.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert checkpoint_digest(b) == cached
    (b / DIGEST_FILE).unlink()
    assert checkpoint_digest(b) != cached


def _upload(s3_env: Any, local: Path, bucket: str, prefix: str) -> str:
    client = s3_env.client()
    client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"


@pytest.mark.slow  # loads diffusers + the tiny pipeline
def test_ip2p_from_s3_matches_local(s3_env: Any, tmp_path: Path, tiny_ckpt: Path, ip2p: InstructPix2PixEditor) -> None:
    uri = _upload(s3_env, tiny_ckpt, f"ckpt-{uuid.uuid4().hex[:8]}", "models/tiny-ip2p")
    resolved = resolve_checkpoint(uri, cache_dir=tmp_path / "cache")
    assert resolved.kind == "s3" and resolved.uri == uri
    assert resolved.digest == checkpoint_digest(tiny_ckpt)
    assert Path(resolved.local_path).is_relative_to(tmp_path / "cache")

    editor = InstructPix2PixEditor(uri, num_inference_steps=STEPS, device="cpu", cache_dir=tmp_path / "cache")
    assert editor.identity()["checkpoint"] == uri
    assert editor.identity()["digest"] == ip2p.identity()["digest"]
    source = _rgb(3, (64, 64))
    assert _edit_bytes(editor, source, seed=5) == _edit_bytes(ip2p, source, seed=5)
    with pytest.raises(ModelLoadError, match="cannot be fetched"):
        resolve_checkpoint(f"s3://{uri.split('/')[2]}/no/such/prefix", cache_dir=tmp_path / "cache")


@pytest.fixture()
def mlflow_uri(mlflow_tracking: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_tracking.url)
    yield mlflow_tracking.url
    mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_ip2p_from_mlflow_models_and_runs(
    mlflow_uri: str, tmp_path: Path, tiny_ckpt: Path, ip2p: InstructPix2PixEditor
) -> None:
    import mlflow
    from mlflow import MlflowClient

    name = f"tiny-ip2p-{uuid.uuid4().hex[:6]}"
    mlflow.set_experiment("bpm-editors-test")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tiny_ckpt), artifact_path="checkpoint")
    client = MlflowClient()
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"runs:/{run.info.run_id}/checkpoint", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", mv.version)
    local_digest = checkpoint_digest(tiny_ckpt)
    cache = tmp_path / "cache"

    by_version = resolve_checkpoint(f"models:/{name}/{mv.version}", cache_dir=cache)
    by_alias = resolve_checkpoint(f"models:/{name}@champion", cache_dir=cache)
    by_run = resolve_checkpoint(f"runs:/{run.info.run_id}/checkpoint", cache_dir=cache)
    for r in (by_version, by_alias, by_run):
        assert r.digest == local_digest
        assert r.run_id == run.info.run_id
        assert (Path(r.local_path) / "model_index.json").is_file()
    assert (by_alias.model_name, by_alias.model_version, by_alias.kind) == (name, str(mv.version), "mlflow-model")
    assert by_alias.local_path == by_version.local_path  # the alias is cached as its version
    assert (by_run.model_name, by_run.kind) == (None, "mlflow-run")

    editor = InstructPix2PixEditor(f"models:/{name}@champion", num_inference_steps=STEPS, device="cpu", cache_dir=cache)
    ident = editor.identity()
    assert (ident["model_name"], ident["model_version"], ident["digest"]) == (name, str(mv.version), local_digest)
    source = _rgb(4, (64, 64))
    assert _edit_bytes(editor, source, seed=9) == _edit_bytes(ip2p, source, seed=9)

    with pytest.raises(ModelLoadError, match="not found"):
        resolve_checkpoint(f"models:/{name}/99", cache_dir=cache)
    with pytest.raises(ModelLoadError, match="alias"):
        resolve_checkpoint(f"models:/{name}@nope", cache_dir=cache)


# --------------------------------------------------------------------------- mask guidance


def _chebyshev_dilation(mask: np.ndarray, r: int) -> np.ndarray:
    """Reference dilation by brute force: within chessboard distance r of a mask pixel."""
    out = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask), strict=True):
        out[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
    return out


def test_blend_with_mask_is_exact_outside_the_dilated_mask() -> None:
    source, edited = _rgb(10, (40, 30)), _rgb(11, (40, 30))
    mask = np.zeros((30, 40), dtype=bool)
    mask[12:15, 5:9] = True
    mask[0, 39] = True  # at the border
    for r in (0, 1, 3):
        out = np.asarray(blend_with_mask(source, edited, mask, r))
        grown = _chebyshev_dilation(mask, r)
        np.testing.assert_array_equal(dilate_mask(mask, r), grown)
        np.testing.assert_array_equal(out[~grown], np.asarray(source)[~grown])
        np.testing.assert_array_equal(out[grown], np.asarray(edited)[grown])
    # An edit of another size is resized to the source first.
    small = Image.new("RGB", (20, 15), (1, 2, 3))
    out = np.asarray(blend_with_mask(source, small, mask, 2))
    assert out.shape == (30, 40, 3)
    assert (out[_chebyshev_dilation(mask, 2)] == (1, 2, 3)).all()
    with pytest.raises(ValueError, match="does not match"):
        blend_with_mask(source, edited, mask[:10], 1)
    with pytest.raises(ValueError, match="dilate_px"):
        dilate_mask(mask, -1)


def test_mask_to_openai_png_marks_the_edit_area_transparent() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:5] = True
    with Image.open(io.BytesIO(mask_to_openai_png(mask))) as im:
        assert im.mode == "RGBA" and im.size == (8, 6)
        alpha = np.asarray(im)[..., 3]
    np.testing.assert_array_equal(alpha == 0, mask)
    assert set(np.unique(alpha)) == {0, 255}


# --------------------------------------------------------------------------- openai over HTTP


class FakeImagesServer:
    """A local server answering POST /v1/images/edits from a script of (status, body)."""

    def __init__(self, script: list[tuple[int, dict[str, Any]]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                msg = BytesParser(policy=HTTP).parsebytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
                )
                fields: dict[str, bytes] = {}
                for part in msg.iter_parts():
                    fields[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True)
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "fields": fields})
                status, payload = server.script.pop(0) if server.script else (500, {"error": {"message": "script empty"}})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeImagesServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _ok(img: Image.Image) -> tuple[int, dict[str, Any]]:
    return 200, {"created": 1, "data": [{"b64_json": base64.b64encode(_png(img)).decode()}]}


SECRET = "sk-test-secret-key-1234567890"


@pytest.fixture()
def openai_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return SECRET


def test_openai_editor_sends_image_prompt_and_mask(openai_key: str) -> None:
    source = _rgb(20, (48, 40))
    answer = Image.new("RGB", (32, 32), (10, 200, 30))
    mask = np.zeros((40, 48), dtype=bool)
    mask[5:25, 10:30] = True
    with FakeImagesServer([_ok(answer)]) as srv:
        editor = EDITORS.create("openai", checkpoint="gpt-image-1", base_url=srv.base_url, size="1024x1024")
        out = editor.edit(Sample("s1", "paint the car green", "u.png"), source, seed=1, mask=mask)
    assert out.size == (48, 40)
    assert np.asarray(out).reshape(-1, 3).tolist()[0] == [10, 200, 30]
    (req,) = srv.requests
    assert req["path"] == "/v1/images/edits"
    assert req["auth"] == f"Bearer {SECRET}"
    f = req["fields"]
    assert f["model"] == b"gpt-image-1" and f["prompt"] == b"paint the car green" and f["size"] == b"1024x1024"
    with Image.open(io.BytesIO(f["image"])) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(source))
    with Image.open(io.BytesIO(f["mask"])) as im:
        np.testing.assert_array_equal(np.asarray(im)[..., 3] == 0, mask)
    ident = editor.identity()
    assert ident["base_url"] == srv.base_url and ident["deterministic"] is False
    assert SECRET not in json.dumps(ident)


def test_openai_editor_retries_429_and_5xx_then_succeeds(openai_key: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script = [(429, {"error": {"message": "slow down"}}), (500, {"error": {"message": "oops"}}), _ok(_rgb(1, (16, 16)))]
    with FakeImagesServer(script) as srv:
        editor = OpenAIImageEditor("gpt-image-1", base_url=srv.base_url, max_retries=3, retry_base_seconds=0.01)
        out = editor.edit(Sample("s1", "x", "u.png"), _rgb(2, (16, 16)), seed=0)
    assert out.size == (16, 16)
    assert len(srv.requests) == 3
    assert "mask" not in srv.requests[0]["fields"]
    assert "HTTP 429" in caplog.text and "HTTP 500" in caplog.text
    assert SECRET not in caplog.text


def test_openai_editor_gives_up_after_bounded_retries(openai_key: str) -> None:
    with FakeImagesServer([(503, {"error": {"message": "down"}})] * 5) as srv:
        editor = OpenAIImageEditor("gpt-image-1", base_url=srv.base_url, max_retries=2, retry_base_seconds=0.0)
        with pytest.raises(EditError, match="after 3 attempt"):
            editor.edit(Sample("s1", "x", "u.png"), _rgb(2, (16, 16)), seed=0)
    assert len(srv.requests) == 3


def test_openai_editor_does_not_retry_client_errors_or_echo_the_key(openai_key: str) -> None:
    refusal = (400, {"error": {"message": f"bad request for key {SECRET}", "type": "invalid_request_error"}})
    with FakeImagesServer([refusal, _ok(_rgb(1, (8, 8)))]) as srv:
        editor = OpenAIImageEditor("gpt-image-1", base_url=srv.base_url, max_retries=3, retry_base_seconds=0.0)
        with pytest.raises(EditError, match="HTTP 400") as info:
            editor.edit(Sample("s1", "x", "u.png"), _rgb(2, (16, 16)), seed=0)
    assert len(srv.requests) == 1
    assert SECRET not in str(info.value) and "***" in str(info.value)


def test_openai_editor_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIImageEditor("gpt-image-1")


# --------------------------------------------------------------------------- precomputed


def test_precomputed_missing_image_fails_that_sample_only(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "src")
    folder = tmp_path / "precomputed"
    folder.mkdir()
    _rgb(50, (72, 56)).save(folder / "s0.png")
    _rgb(52, (30, 20)).save(folder / "s2.jpg", quality=100)
    summary = generate_edits(samples, "precomputed", tmp_path / "out", candidate="pre",
                             editor_options={"checkpoint": str(folder)}, progress=False)
    assert (summary.edited, summary.failed, summary.total) == (2, 1, 3)
    assert "no edited image" in summary.errors["s1"]
    es = EditSet.open(tmp_path / "out")
    np.testing.assert_array_equal(np.asarray(es.load_image("s0")), np.asarray(_rgb(50, (72, 56))))
    assert es.load_image("s2").size == (30, 20)  # precomputed outputs are taken as they are
    assert es.error("s1") is not None
    assert es.editor["name"] == "precomputed" and es.editor["digest"].startswith("sha256:")


def test_precomputed_from_an_s3_prefix(s3_env: Any, tmp_path: Path) -> None:
    folder = tmp_path / "cand"
    folder.mkdir()
    _rgb(60, (16, 16)).save(folder / "s0.png")
    (folder / "editset.json").write_text(json.dumps({"candidate": "cand", "editor": "precomputed"}))
    uri = _upload(s3_env, folder, f"edits-{uuid.uuid4().hex[:8]}", "candidates/cand")
    editor = PrecomputedEditor(uri, cache_dir=tmp_path / "cache")
    assert editor.candidate == "cand" and editor.identity()["folder"] == uri
    got = editor.edit(Sample("s0", "x", "u.png"), _rgb(0, (16, 16)), seed=0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(_rgb(60, (16, 16))))
    with pytest.raises(DataError, match="no edited image"):
        editor.edit(Sample("s9", "x", "u.png"), _rgb(0, (16, 16)), seed=0)


# --------------------------------------------------------------------------- generate runner


def test_derive_seed_is_documented_stable_and_distinct() -> None:
    digest = hashlib.sha256(b"3:sample-1").digest()
    assert derive_seed(3, "sample-1") == int.from_bytes(digest[:8], "big") >> 1
    seeds = {derive_seed(0, f"s{i}") for i in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(0, "s1") != derive_seed(1, "s1")
    with pytest.raises(TypeError, match="run_seed"):
        derive_seed("0", "s1")  # type: ignore[arg-type]


def test_generate_isolates_failures_and_records_seeds(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "src", n=4)
    bad_source = Sample("s-missing", "x", str(tmp_path / "src" / "nope.png"))
    editor = RecordingEditor(fail={"s2"})
    summary = generate_edits([*samples, bad_source], editor, tmp_path / "out", candidate="c", run_seed=5,
                             progress=False)
    assert (summary.total, summary.edited, summary.failed, summary.skipped) == (5, 3, 2, 0)
    assert "editor exploded on s2" in summary.errors["s2"]
    assert "file not found" in summary.errors["s-missing"]
    assert summary.seconds_per_edit is not None and not summary.ok
    es = EditSet.open(tmp_path / "out")
    assert es.settings == {"run_seed": 5, "seed_scheme": SEED_SCHEME, "mask_guidance": None}
    for rec in es.records():
        assert rec["seed"] == derive_seed(5, rec["sample_id"])
    assert dict(editor.calls) == {s.sample_id: derive_seed(5, s.sample_id) for s in samples}
    assert es.load_image("s0").size == (72, 56)


def test_generate_resumes_skipping_finished_samples(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "src", n=4)
    out = tmp_path / "out"
    # Pre-populate as an interrupted run would have left it: s0 done, s1 failed.
    first = RecordingEditor(fail={"s1"})
    generate_edits(samples[:2], first, out, candidate="c", progress=False)
    before = (out / "images" / "s0.png").read_bytes()

    second = RecordingEditor()
    summary = generate_edits(samples, second, out, candidate="c", progress=False)
    assert [sid for sid, _ in second.calls] == ["s1", "s2", "s3"]
    assert (summary.skipped, summary.edited, summary.failed) == (1, 3, 0)
    assert (out / "images" / "s0.png").read_bytes() == before
    assert sorted(EditSet.open(out).sample_ids()) == ["s0", "s1", "s2", "s3"]
    with pytest.raises(ConfigError, match="made differently"):
        generate_edits(samples, second, out, candidate="c", run_seed=1, progress=False)


@pytest.mark.slow  # loads diffusers + the tiny pipeline
def test_generate_with_ip2p_is_reproducible(tmp_path: Path, ip2p: InstructPix2PixEditor) -> None:
    samples = _samples(tmp_path / "src", n=2, size=(64, 48))
    a = generate_edits(samples, ip2p, tmp_path / "a", candidate="tiny", run_seed=0, progress=False)
    b = generate_edits(samples, ip2p, tmp_path / "b", candidate="tiny", run_seed=0, progress=False)
    c = generate_edits(samples[:1], ip2p, tmp_path / "c", candidate="tiny", run_seed=1, progress=False)
    assert a.edited == b.edited == 2 and c.edited == 1
    for sid in ("s0", "s1"):
        assert (tmp_path / "a" / "images" / f"{sid}.png").read_bytes() == (tmp_path / "b" / "images" / f"{sid}.png").read_bytes()
    assert (tmp_path / "a" / "images" / "s0.png").read_bytes() != (tmp_path / "a" / "images" / "s1.png").read_bytes()
    assert (tmp_path / "a" / "images" / "s0.png").read_bytes() != (tmp_path / "c" / "images" / "s0.png").read_bytes()
    rec = next(r for r in EditSet.open(tmp_path / "a").records() if r["sample_id"] == "s0")
    assert rec["settings"]["resolution"] == [64, 64]
    assert EditSet.open(tmp_path / "a").editor["digest"] == ip2p.identity()["digest"]


def test_generate_mask_guidance_blends_outside_the_dilated_reference_mask(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "src", n=2, masks=True)
    no_mask = Sample("s-nomask", "x", samples[0].source_image)
    editor = RecordingEditor(accepts_mask=True)
    guidance = MaskGuidance(dilate_px=2)
    summary = generate_edits([*samples, no_mask], editor, tmp_path / "out", candidate="c", mask_guidance=guidance,
                             progress=False)
    assert (summary.edited, summary.failed) == (2, 1)
    assert "no reference_mask" in summary.errors["s-nomask"]
    es = EditSet.open(tmp_path / "out")
    assert es.settings["mask_guidance"] == {"dilate_px": 2, "blend": True, "mask_source": "reference",
                                            "passed_to_editor": True}
    for s in samples:
        with Image.open(s.reference_mask) as m:
            grown = _chebyshev_dilation(np.asarray(m) >= 128, 2)
        np.testing.assert_array_equal(editor.masks[s.sample_id], grown)  # the editor got the dilated mask
        out = np.asarray(es.load_image(s.sample_id))
        src = np.asarray(Image.open(s.source_image).convert("RGB"))
        np.testing.assert_array_equal(out[~grown], src[~grown])
        colour = [int(b) for b in derive_seed(0, s.sample_id).to_bytes(8, "big")[:3]]
        assert (out[grown] == colour).all()


def test_generate_mask_guidance_with_localization_masks(tmp_path: Path) -> None:
    from bpm_lib.masks import encode_rle

    samples = _samples(tmp_path / "src", n=2)
    m = np.zeros((56, 72), dtype=bool)
    m[3:9, 4:11] = True
    lines = [
        {"sample_id": "s0", "status": "ok", "localization": {"side": "source", "mask": encode_rle(m)}},
        {"sample_id": "s1", "status": "error", "localization": None, "error": "not found"},
    ]
    path = tmp_path / "source.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    masks = load_masks_jsonl(path)
    assert list(masks) == ["s0"]
    editor = RecordingEditor()  # not mask-aware: only blended
    summary = generate_edits(samples, editor, tmp_path / "out", candidate="c", progress=False, masks=masks,
                             mask_guidance=MaskGuidance(dilate_px=0, mask_source="localization"))
    assert (summary.edited, summary.failed) == (1, 1)
    assert "no mask was given" in summary.errors["s1"]
    assert editor.masks == {}
    out = np.asarray(EditSet.open(tmp_path / "out").load_image("s0"))
    src = np.asarray(Image.open(samples[0].source_image).convert("RGB"))
    np.testing.assert_array_equal(out[~m], src[~m])
    with pytest.raises(ValueError, match="mask_guidance is off"):
        generate_edits(samples, editor, tmp_path / "o2", candidate="c", masks=masks, progress=False)


# --------------------------------------------------------------------------- CLI


def _evalset(tmp_path: Path, n: int = 3) -> Path:
    from bpm_lib.io.manifest import write_manifest

    root = tmp_path / "evalset"
    samples = _samples(root / "images", n=n, size=(70, 50))
    write_manifest(root / "manifest.jsonl", samples)
    return root


def test_cli_edit_precomputed_exit_codes_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evalset = _evalset(tmp_path)
    folder = tmp_path / "pre"
    folder.mkdir()
    for sid in ("s0", "s2"):
        _rgb(7, (70, 50)).save(folder / f"{sid}.png")
    args = ["edit", "--evalset", str(evalset), "--editor", "precomputed", "--checkpoint", str(folder),
            "--candidate", "pre", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["edited"], summary["failed"]) == (2, 1)
    assert main([*args, "--allow-errors"]) == 0  # resumed: s0, s2 skipped, s1 retried (still missing)
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped"], summary["edited"], summary["failed"]) == (2, 0, 1)
    assert main([*args, "--steps", "3"]) == 2
    assert "--steps is not an option of the 'precomputed' editor" in capsys.readouterr().err
    assert main([*args, "--option", "colour=1"]) == 2


@pytest.mark.slow  # loads diffusers + the tiny pipeline
def test_cli_edit_ip2p(tmp_path: Path, tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evalset = _evalset(tmp_path, n=2)
    out = tmp_path / "out"
    rc = main(["edit", "--evalset", str(evalset), "--editor", "ip2p", "--checkpoint", str(tiny_ckpt),
               "--candidate", "tiny", "--out", str(out), "--steps", "1", "--device", "cpu", "--seed", "3",
               "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["edited"] == 2 and summary["editor"]["num_inference_steps"] == 1
    es = EditSet.open(out)
    assert es.candidate == "tiny" and es.settings["run_seed"] == 3
    assert all(es.load_image(sid).size == (70, 50) for sid in ("s0", "s1"))


def test_writer_identity_mismatch_from_another_editor_is_refused(tmp_path: Path) -> None:
    with EditSetWriter(tmp_path / "es", "c", {"name": "recording", "version": 0}, {}) as w:
        w.add_error("s0", "x")
    with pytest.raises(ConfigError):
        generate_edits(_samples(tmp_path / "src", n=1), RecordingEditor(), tmp_path / "es", candidate="c",
                       progress=False)


def test_cli_edit_reads_an_s3_evalset_with_mask_guidance(
    s3_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bpm_lib.io.manifest import write_manifest

    local = tmp_path / "evalset"
    samples = _samples(local / "images", n=2, size=(40, 32), masks=True)
    write_manifest(local / "manifest.jsonl", samples)
    uri = _upload(s3_env, local, f"evalset-{uuid.uuid4().hex[:8]}", "sets/demo")
    folder = tmp_path / "pre"
    folder.mkdir()
    for sid in ("s0", "s1"):
        Image.new("RGB", (40, 32), (255, 0, 255)).save(folder / f"{sid}.png")
    out = tmp_path / "out"
    rc = main(["edit", "--evalset", uri, "--editor", "precomputed", "--checkpoint", str(folder),
               "--candidate", "pre", "--out", str(out), "--mask-guidance", "--dilate-px", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    es = EditSet.open(out)
    assert es.settings["mask_guidance"]["dilate_px"] == 1
    for s in samples:
        with Image.open(s.reference_mask) as m:
            grown = _chebyshev_dilation(np.asarray(m) >= 128, 1)
        result = np.asarray(es.load_image(s.sample_id))
        source = np.asarray(Image.open(s.source_image).convert("RGB"))
        np.testing.assert_array_equal(result[~grown], source[~grown])
        assert (result[grown] == (255, 0, 255)).all()
