"""Security: no loader ever runs pickled code from a checkpoint, YAML is only safe-loaded,
credentials never reach MLflow, reports, logs or the spool, and servers bind loopback."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bpm_lib.errors import BpmError, TrackingError
from tests.fixtures.tiny_clip import save_malicious_checkpoint

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("bpm_lib", "components", "pipelines", "tests")


def _python_files() -> Iterator[Path]:
    for top in SOURCE_DIRS:
        yield from (p for p in (REPO / top).rglob("*.py") if p.resolve() != Path(__file__).resolve())


# --------------------------------------------------------------------------- source checks


def test_yaml_is_only_ever_safe_loaded() -> None:
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all|full_load_all)\s*\("
                        r"|Loader\s*=\s*yaml\.(Loader|UnsafeLoader|FullLoader)|yaml\.(Unsafe|Full)?Loader\b")
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in _python_files()
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if unsafe.search(line)]
    assert hits == []
    assert any("yaml.safe_load(" in p.read_text() for p in (REPO / "bpm_lib").rglob("*.py"))  # the check sees code


def test_no_unsafe_deserialisation_in_the_library() -> None:
    """pickle/dill/joblib/marshal never load data; torch.load always passes weights_only=True;
    no model is loaded with trust_remote_code."""
    patterns = {
        "pickle load": re.compile(r"\b(pickle|cPickle|dill|joblib|marshal|shelve)\.(load|loads|open)\b"),
        "torch.load without weights_only=True": re.compile(r"torch\.load\((?!.*weights_only\s*=\s*True)"),
        "trust_remote_code": re.compile(r"trust_remote_code\s*=\s*True"),
        "numpy pickles": re.compile(r"allow_pickle\s*=\s*True"),
    }
    hits = []
    for path in (p for top in ("bpm_lib", "components", "pipelines") for p in (REPO / top).rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if code.strip().startswith(("\"", "'", "``")) or "``" in code:
                continue  # documentation
            hits += [f"{what}: {path.relative_to(REPO)}:{n}" for what, rx in patterns.items() if rx.search(code)]
    assert hits == []


# --------------------------------------------------------------------------- malicious checkpoints


def _poison(folder: Path, marker: Path) -> Path:
    """Replace every safetensors file under ``folder`` by a pickled checkpoint at the name
    the loader falls back to; unpickling it would create ``marker``."""
    found = list(folder.rglob("*.safetensors"))
    assert found, f"nothing to poison in {folder}"
    for path in found:
        name = {"model.safetensors": "pytorch_model.bin",
                "diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",
                "open_clip_model.safetensors": "open_clip_pytorch_model.bin"}.get(path.name, path.stem + ".bin")
        path.unlink()
        save_malicious_checkpoint(path.with_name(name), marker)
    for index in folder.rglob("*.safetensors.index.json"):
        index.unlink()
    return folder


def test_the_malicious_checkpoint_is_live(tmp_path: Path) -> None:
    """The payload does run when a checkpoint is unpickled: the tests below can fail."""
    import torch

    marker = tmp_path / "RAN"
    bad = save_malicious_checkpoint(tmp_path / "evil.bin", marker)
    torch.load(bad, weights_only=False)
    assert marker.exists()


def _grounding_dino(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.grounding_dino import GroundingDinoDetector
    from tests.fixtures.tiny_models import save_tiny_grounding_dino

    folder = _poison(save_tiny_grounding_dino(tmp / "gdino"), marker)
    return lambda: GroundingDinoDetector(str(folder), device="cpu")


def _sam(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.sam import SamSegmenter
    from tests.fixtures.tiny_models import save_tiny_sam

    folder = _poison(save_tiny_sam(tmp / "sam"), marker)
    return lambda: SamSegmenter(str(folder), device="cpu")


def _official_sam(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.sam import load_official_sam
    from tests.fixtures.tiny_models import build_tiny_official_sam

    bad = save_malicious_checkpoint(tmp / "sam_vit_tiny.pth", marker)
    return lambda: load_official_sam(bad, builder=build_tiny_official_sam)


def _open_clip_file(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.clip import load_state_dict_safely

    bad = save_malicious_checkpoint(tmp / "open_clip.pt", marker)
    return lambda: load_state_dict_safely(bad)


def _open_clip_dir(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.clip import OpenClipEmbedder
    from tests.fixtures.tiny_clip import save_tiny_open_clip_dir

    folder = _poison(save_tiny_open_clip_dir(tmp / "oc"), marker)

    def load() -> Any:
        emb = OpenClipEmbedder(f"local-dir:{folder}", device="cpu")
        return emb.encode_texts(["a ball"])

    return load


def _hf_clip(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.clip import HfClipEmbedder
    from tests.fixtures.tiny_clip import save_tiny_hf_clip

    folder = _poison(save_tiny_hf_clip(tmp / "hfclip"), marker)
    return lambda: HfClipEmbedder(str(folder), device="cpu").encode_texts(["a ball"])


def _dino(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.baselines import DinoSimilarity
    from tests.fixtures.tiny_clip import save_tiny_dino

    folder = _poison(save_tiny_dino(tmp / "dino"), marker)
    return lambda: DinoSimilarity(str(folder), device="cpu").load()


def _ip2p(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.base import EDITORS
    from tests.fixtures.tiny_ip2p import save_tiny_ip2p

    folder = _poison(save_tiny_ip2p(tmp / "ip2p"), marker)
    return lambda: EDITORS.create("ip2p", checkpoint=str(folder), device="cpu")


def _llm_parser(tmp: Path, marker: Path) -> Callable[[], Any]:
    from bpm_lib.backends.llm_parsers import TransformersParser
    from tests.backends.test_transformers_parser import CHATML, _build_tiny

    folder = _poison(_build_tiny(tmp / "llm", CHATML), marker)
    return lambda: TransformersParser(str(folder), device="cpu").load()


LOADERS = {"grounding-dino": _grounding_dino, "sam": _sam, "official-sam": _official_sam,
           "open-clip-file": _open_clip_file, "open-clip-dir": _open_clip_dir, "hf-clip": _hf_clip,
           "dino-baseline": _dino, "ip2p-editor": _ip2p, "transformers-parser": _llm_parser}


@pytest.mark.slow
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_no_loader_ever_unpickles_code_from_a_checkpoint(loader: str, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    load = LOADERS[loader](tmp_path, marker)
    with pytest.raises(BpmError) as info:  # a ModelLoadError that says why, not a silent load
        load()
    assert not marker.exists(), f"{loader} executed code from a pickled checkpoint"
    assert re.search(r"safetensors|weights.only|pickle|cannot|plain", str(info.value), re.IGNORECASE), info.value


# --------------------------------------------------------------------------- credentials


def _canary(name: str) -> str:
    return f"CANARY-{name}-{uuid.uuid4().hex}"


def _files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path} holds {n[:14]}…" for n in needles if n.encode() in data]
    return hits


@pytest.mark.slow
def test_credentials_never_reach_mlflow_reports_logs_or_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: Any, mlflow_tracking: Any,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    """A whole campaign (dataset from S3, the openai parser over a local endpoint that
    echoes the key it received into one error, MLflow tracking) with every credential set
    to a unique canary: no param, tag, metric key, artifact, file, cache or log holds one."""
    from mlflow import MlflowClient

    from bpm_lib.backends.base import PARSERS
    from bpm_lib.backends.parse_schema import ANSWER_KEYS, format_answer
    from bpm_lib.cli import main
    from bpm_lib.io.datasets import fetch
    from bpm_lib.io.manifest import read_manifest
    from tests.fixtures.chat_server import Reply, chat_server

    # the demo set, on S3
    demo = tmp_path / "demo"
    fetch("demo", demo, limit=4)
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    client = s3_env.client()
    client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in demo.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"demo/{path.relative_to(demo).as_posix()}", Body=path.read_bytes())
    instructions = [s.instruction for s in read_manifest(demo / "manifest.jsonl")]

    secrets = {"OPENAI_API_KEY": _canary("openai"), "AWS_SECRET_ACCESS_KEY": _canary("aws-secret"),
               "AWS_SESSION_TOKEN": _canary("aws-session"), "MLFLOW_TRACKING_PASSWORD": _canary("mlflow")}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BPM_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking.url)
    monkeypatch.setenv("BPM_PARSER_MODEL", "test-model")
    rules = PARSERS.create("rules")

    def answer(body: dict[str, Any]) -> Reply:
        text = body["messages"][-1]["content"]
        instruction = next(i for i in instructions if text.endswith(i))
        if instruction == instructions[0]:  # an endpoint that puts the received key in its error text
            return Reply(status=401, echo_authorization=True)
        parsed = rules.parse(instruction).to_dict()
        return Reply(content=format_answer({k: parsed[k] for k in ANSWER_KEYS}))

    experiment = f"secrets-{uuid.uuid4().hex[:6]}"
    config = tmp_path / "campaign.yaml"
    config.write_text(
        f"name: secrets\ndataset: {{source: 's3://{bucket}/demo'}}\npreset: tiny-random\nparser: openai\n"
        f"localizer: reference-mask\ntracking: {{experiment: {experiment}}}\n"
        "candidates:\n  - {name: well_edited, checkpoint: 'evalset:candidates/well_edited'}\n"
    )
    with chat_server() as chat, caplog.at_level(logging.DEBUG):
        chat.default = answer
        monkeypatch.setenv("OPENAI_BASE_URL", chat.base_url)
        # -vv: debug logging everywhere, third-party libraries included (botocore prints headers)
        rc = main(["-vv", "run", str(config), "--in-process", "--root", str(tmp_path / "bpm"), "--json"])
        assert chat.attempts == len(instructions)
        assert any(r.headers.get("Authorization") == f"Bearer {secrets['OPENAI_API_KEY']}" for r in chat.requests)
    out, err = capfd.readouterr()
    assert rc == 1  # the sample whose parse failed
    results_dir = Path(json.loads(out)["results"])
    scores = [json.loads(line) for line in (results_dir / "scores.jsonl").read_text().splitlines()]
    echoed = [s for s in scores if s["status"] == "error"]
    assert len(echoed) == 1 and "Incorrect API key provided" in echoed[0]["error"], echoed  # the echo happened

    needles = list(secrets.values())
    # MLflow: params, tags, metric names of every run, then every byte the server stored
    mlflow = MlflowClient(mlflow_tracking.url)
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is not None
    runs = mlflow.search_runs([exp.experiment_id])
    assert len(runs) == 2
    for run in runs:
        blob = json.dumps([run.data.params, run.data.tags, list(run.data.metrics)])
        assert not [n for n in needles if n in blob], run.info.run_id
    assert _files_containing(mlflow_tracking.root, needles) == []
    # results, report, plots, stage outputs, caches, spool
    for folder in (tmp_path / "bpm", tmp_path / "cache"):
        assert _files_containing(folder, needles) == []
    assert results_dir.is_relative_to(tmp_path / "bpm")
    assert not (tmp_path / "spool").exists()
    # every log record (debug included) and everything printed
    records = [r.getMessage() for r in caplog.records]
    assert any(r.name.startswith("botocore") for r in caplog.records)  # third-party debug logs were on
    logged = "\n".join(records) + out + err
    assert not [n for n in needles if n in logged]


def test_spooled_calls_hold_no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """What the spool keeps (params given to log_campaign included) has no credential."""
    from bpm_lib.io import spool
    from bpm_lib.io.tracking import safe_params
    from tests.fixtures.servers import free_port

    secret = _canary("param")
    params = {"api_key": secret, "aws_secret_access_key": secret, "nested": {"token": secret, "preset": "x"},
              "password": secret, "preset": "tiny-random"}
    assert secret not in json.dumps(safe_params(params))
    results = tmp_path / "results"
    results.mkdir()
    (results / "summary.json").write_text(json.dumps({"candidates": {}}))
    (results / "scores.jsonl").write_text("")
    args = spool.campaign_arguments(results, tracking_uri=f"http://user:{secret}@127.0.0.1:{free_port()}",
                                    experiment="e", campaign="c", candidates=[], dataset={}, params=params,
                                    samples={}, edits={}, pipeline_run_id=None, pipeline_spec=None, log_id="abc")
    monkeypatch.setenv("BPM_TRACKING_MAX_ATTEMPTS", "1")
    with caplog.at_level(logging.DEBUG), pytest.raises(TrackingError) as info:
        spool.log_campaign_or_spool(args, spool_dir=tmp_path / "spool")
    assert secret not in str(info.value) and "***@127.0.0.1" in str(info.value)
    assert secret not in "\n".join(r.getMessage() for r in caplog.records)
    (entry,) = spool.entries(tmp_path / "spool")
    assert isinstance(entry, spool.SpoolEntry)
    stored = (entry.path / spool.ENTRY_FILE).read_text()
    assert '"preset": "tiny-random"' in stored and '"nested.preset": "x"' in stored
    assert secret not in stored
    uri = json.loads(stored)["arguments"]["tracking_uri"]
    assert uri.startswith("http://***@127.0.0.1:")
    # replaying needs the URI with its credentials again: a clear error until it is given
    (outcome,) = spool.flush(tmp_path / "spool")
    assert outcome.status == "failed" and "pass --tracking-uri" in (outcome.error or "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.replace("***", f"user:{secret}"))
    (outcome,) = spool.flush(tmp_path / "spool")
    assert outcome.status == "failed" and "unreachable" in (outcome.error or "")  # it went to the real URI
    assert secret not in (entry.path / spool.ENTRY_FILE).read_text()


# --------------------------------------------------------------------------- servers bind loopback


def test_every_server_entry_point_binds_loopback_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import bpm_lib.io.tracking as tracking
    from bpm_lib.cli import build_parser
    from bpm_lib.trigger.service import TriggerConfig

    # 1. the places in the library that open a listening socket are exactly the audited ones
    server_calls = re.compile(r"HTTPServer\b|\.listen\(|uvicorn\.run|\"mlflow\", \"server\"|socketserver\."
                              r"|\.bind\(\(")
    found = sorted({str(p.relative_to(REPO)) for p in (REPO / "bpm_lib").rglob("*.py")
                    if server_calls.search(p.read_text(encoding="utf-8"))})
    assert found == ["bpm_lib/io/tracking.py", "bpm_lib/trigger/service.py"], found

    # 2. the trigger service: 127.0.0.1 unless the config (or --host) says otherwise
    assert TriggerConfig(campaign={"name": "x"}).host == "127.0.0.1"
    args = build_parser().parse_args(["trigger", "serve", "--config", "t.yaml"])
    assert args.host is None  # no CLI default that would override the config's loopback

    # 3. the local MLflow server `bpm run` starts
    started: list[list[str]] = []

    class Stop(Exception):
        pass

    def popen(cmd: list[str], **kw: Any) -> Any:
        started.append(list(cmd))
        raise Stop

    monkeypatch.setattr(tracking.subprocess, "Popen", popen)
    monkeypatch.setattr(subprocess, "Popen", popen)
    with pytest.raises(Stop):
        tracking.ensure_local_server(tmp_path / "bpm")
    (cmd,) = started
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"

    # 4. the shipped example trigger config binds loopback too
    example = (REPO / "examples" / "trigger.yaml").read_text()
    assert re.search(r"^host:\s*127\.0\.0\.1\b", example, re.MULTILINE)
