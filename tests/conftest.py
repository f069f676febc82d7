from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fixtures.servers import MlflowServer, S3Endpoint, mlflow_server, moto_server

# Tests never reach a model hub: loading code must fail fast and clearly when offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """A real S3 endpoint (moto_server on 127.0.0.1) shared by the session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_env(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """Point boto3 (through the standard AWS_* variables) at the moto endpoint."""
    for key, value in s3_endpoint.env.items():
        monkeypatch.setenv(key, value)
    return s3_endpoint


@pytest.fixture(scope="session")
def mlflow_tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow server (SQLite, local artifacts) shared by the session."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(autouse=True)
def _real_print() -> Iterator[None]:
    """kfp.local swaps ``builtins.print`` per task to indent its logs; when tasks run in
    threads (ParallelFor) the swaps can interleave and leave it swapped. Product code
    restores it (bpm_lib.runner.local); tests that drive kfp.local directly get the same
    guarantee here, so one test cannot change what the next one prints."""
    import builtins

    real = builtins.print
    yield
    builtins.print = real
