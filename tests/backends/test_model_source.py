"""Model sources (local folder, s3:// prefix, hub id), load errors, device and dtype choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bpm_lib.backends.device import dtype_name, pick_device, pick_dtype
from bpm_lib.backends.model_source import (
    default_cache_dir,
    load_pretrained,
    read_packaged_config,
    resolve_model_source,
)
from bpm_lib.errors import ConfigError, ModelLoadError
from bpm_lib.io.storage import COMPLETE_MARKER, uri_cache_key
from tests.fixtures.s3 import MotoS3, moto_s3_endpoint  # noqa: F401
from tests.fixtures.tiny_models import tiny_grounding_dino_dir  # noqa: F401

# -- local paths and hub ids ------------------------------------------------------------


def test_local_dir_is_returned_as_is(tmp_path: Path) -> None:
    assert resolve_model_source(str(tmp_path), what="test model") == str(tmp_path)
    assert resolve_model_source(f"file://{tmp_path}", what="test model") == str(tmp_path)


def test_missing_local_dir_is_a_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_source(str(missing), what="test model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_source("./definitely-not-here-bpm", what="test model")


def test_hub_id_is_returned_as_is() -> None:
    assert resolve_model_source("IDEA-Research/grounding-dino-tiny", what="x") == "IDEA-Research/grounding-dino-tiny"


@pytest.mark.parametrize("bad", ["", "   ", "gs://bucket/model", "http://example.com/model"])
def test_bad_sources_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="source"):
        resolve_model_source(bad, what="x")


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("BPM_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "bpm-eval" / "models"


def test_packaged_configs_are_readable() -> None:
    cfg = read_packaged_config("tiny_grounding_dino.json")
    assert cfg["model"]["d_model"] == 32
    assert "box_threshold" in cfg["defaults"]
    with pytest.raises(ValueError, match="bare"):
        read_packaged_config("../pyproject.toml")
    with pytest.raises(ModelLoadError, match="missing"):
        read_packaged_config("no_such_config.json")


# -- s3 -----------------------------------------------------------------------------------


def _fill(s3: MotoS3) -> tuple[str, str]:
    bucket = s3.bucket("models")
    s3.put(bucket, "gd/config.json", '{"a": 1}')
    s3.put(bucket, "gd/weights/model.safetensors", b"\x00\x01weights")
    s3.put(bucket, "gd/", b"")  # a "folder" placeholder object is skipped
    s3.put(bucket, "gd-old/config.json", '{"old": true}')  # sibling prefix, not part of gd
    return bucket, f"s3://{bucket}/gd"


def test_s3_prefix_is_downloaded_once(moto_s3_endpoint: MotoS3, tmp_path: Path) -> None:  # noqa: F811
    bucket, uri = _fill(moto_s3_endpoint)
    local = Path(resolve_model_source(uri, cache_dir=tmp_path, what="test model"))
    assert local.is_relative_to(tmp_path)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert files == ["config.json", "weights/model.safetensors"]  # no placeholder, no sibling prefix
    assert json.loads((local / "config.json").read_text()) == {"a": 1}
    assert (local / "weights" / "model.safetensors").read_bytes() == b"\x00\x01weights"

    # Once complete, a second resolve downloads nothing: the bucket's content no longer matters.
    client = moto_s3_endpoint.client()
    client.put_object(Bucket=bucket, Key="gd/config.json", Body=b'{"a": 2}')
    assert Path(resolve_model_source(uri, cache_dir=tmp_path, what="test model")) == local
    assert json.loads((local / "config.json").read_text()) == {"a": 1}

    # An incomplete download (no marker) is redone.
    (local.parent / COMPLETE_MARKER).unlink()
    assert Path(resolve_model_source(uri, cache_dir=tmp_path, what="test model")) == local
    assert json.loads((local / "config.json").read_text()) == {"a": 2}


def test_s3_default_cache_dir_is_keyed_by_uri(
    moto_s3_endpoint: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    _, uri = _fill(moto_s3_endpoint)
    monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path))
    local = Path(resolve_model_source(uri, what="test model"))
    assert local.parent == tmp_path / "models" / "s3" / uri_cache_key(uri)


def test_s3_single_object_resolves_to_the_file(moto_s3_endpoint: MotoS3, tmp_path: Path) -> None:  # noqa: F811
    bucket = moto_s3_endpoint.bucket("ckpt")
    uri = moto_s3_endpoint.put(bucket, "sam/sam_vit_b.pth", b"tensors")
    local = Path(resolve_model_source(uri, cache_dir=tmp_path, what="checkpoint"))
    assert local.name == "sam_vit_b.pth" and local.read_bytes() == b"tensors"
    assert Path(resolve_model_source(uri, cache_dir=tmp_path, what="checkpoint")) == local


def test_s3_keys_with_dotdot_are_rejected(moto_s3_endpoint: MotoS3, tmp_path: Path) -> None:  # noqa: F811
    bucket = moto_s3_endpoint.bucket("evil")
    moto_s3_endpoint.put(bucket, "m/config.json", "{}")
    moto_s3_endpoint.put(bucket, "m/../../escape.txt", "pwned")
    with pytest.raises(ModelLoadError, match="path escape"):
        resolve_model_source(f"s3://{bucket}/m", cache_dir=tmp_path, what="test model")
    assert not list(tmp_path.rglob("escape.txt"))
    assert not list(tmp_path.parent.rglob("escape.txt"))


def test_s3_empty_prefix_and_missing_bucket(moto_s3_endpoint: MotoS3, tmp_path: Path) -> None:  # noqa: F811
    bucket = moto_s3_endpoint.bucket("empty")
    with pytest.raises(ModelLoadError, match=r"test model: cannot download .*\(nothing listed\)"):
        resolve_model_source(f"s3://{bucket}/nothing", cache_dir=tmp_path, what="test model")
    with pytest.raises(ModelLoadError, match="bucket does not exist"):
        resolve_model_source("s3://no-such-bucket-bpm/x", cache_dir=tmp_path, what="test model")


def test_tiny_detector_loads_from_s3(
    moto_s3_endpoint: MotoS3, tiny_grounding_dino_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    from bpm_lib.backends.grounding_dino import GroundingDinoDetector

    bucket = moto_s3_endpoint.bucket("tiny")
    uri = moto_s3_endpoint.upload_dir(tiny_grounding_dino_dir, bucket, "detectors/tiny-gd")
    det = GroundingDinoDetector(uri, device="cpu", cache_dir=tmp_path, meaningless=True)
    assert det.identity()["model"] == uri
    ref = GroundingDinoDetector(str(tiny_grounding_dino_dir), device="cpu", meaningless=True)
    for a, b in zip(det.model.state_dict().values(), ref.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# -- load errors ------------------------------------------------------------------------


def test_missing_hub_model_offline_says_how_to_provide_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_pretrained(AutoProcessor.from_pretrained, "bpm-eval-tests/no-such-model", what="test detector")
    msg = str(info.value)
    assert "bpm-eval-tests/no-such-model" in msg
    assert "local directory" in msg and "HF_HOME" in msg and "s3://" in msg and "HF_HUB_OFFLINE" in msg
    assert isinstance(info.value.__cause__, OSError)


def test_missing_hub_model_through_the_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    from bpm_lib.backends.grounding_dino import GroundingDinoDetector
    from bpm_lib.backends.sam import SamSegmenter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HOME"):
        GroundingDinoDetector("bpm-eval-tests/no-such-detector", device="cpu")
    with pytest.raises(ModelLoadError, match="HF_HOME"):
        SamSegmenter("bpm-eval-tests/no-such-sam", device="cpu")


def test_local_dir_without_model_files(tmp_path: Path) -> None:
    from transformers import SamModel

    with pytest.raises(ModelLoadError, match="does not contain a loadable model"):
        load_pretrained(SamModel.from_pretrained, str(tmp_path), what="test sam", use_safetensors=True)


def test_pickled_only_weights_are_refused(tiny_grounding_dino_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """use_safetensors=True: a folder with only a pickled pytorch_model.bin is not loaded."""
    import shutil

    from transformers import AutoModelForZeroShotObjectDetection

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_grounding_dino_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="does not contain a loadable model"):
        load_pretrained(
            AutoModelForZeroShotObjectDetection.from_pretrained, str(pickled), what="test", use_safetensors=True
        )


# -- device and dtype -------------------------------------------------------------------


def test_pick_device_cpu_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device(" CPU ") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda"


def test_pick_device_cuda_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda") == "cuda"
    assert pick_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="2 CUDA device"):
        pick_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:", "cuda:x", "mps0"])
def test_pick_device_unknown_is_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("[", r"\[")):
        pick_device(bad)


def test_pick_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pick_dtype("cpu") == torch.float32
    assert pick_dtype("cpu", "bf16") == torch.bfloat16
    assert pick_dtype("cuda", "fp16") == torch.float16
    assert pick_dtype("cpu", "Float32") == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert pick_dtype("cuda") == torch.bfloat16
    assert pick_dtype("cuda:1") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert pick_dtype("cuda:0") == torch.float16
    with pytest.raises(ValueError, match="int8"):
        pick_dtype("cpu", "int8")
    with pytest.raises(ValueError, match="device"):
        pick_dtype("", "auto")
    with pytest.raises(ValueError, match="nonsense"):
        pick_dtype("nonsense")
    assert dtype_name(torch.bfloat16) == "bfloat16"
