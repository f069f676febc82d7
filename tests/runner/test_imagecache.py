"""ImageCache: LRU reuse and background decoding that gives the same pixels, the same
decode counts and the same errors as decoding on demand."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bpm_lib.errors import DataError
from bpm_lib.io.images import load_rgb, to_frame
from bpm_lib.runner.imagecache import WORKERS_ENV, ImageCache, default_workers


def _images(folder: Path, n: int, size: tuple[int, int] = (64, 48)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_lru_decodes_each_file_once_while_cached(tmp_path: Path) -> None:
    paths = _images(tmp_path, 3)
    cache = ImageCache(capacity=2)
    for p in paths[:2] * 3:
        cache.frame(p)
    assert cache.decodes == 2
    cache.rgb(paths[2])  # evicts paths[0] from the rgb LRU
    cache.rgb(paths[0])
    assert cache.decodes == 4
    with pytest.raises(ValueError):
        ImageCache(capacity=0)
    with pytest.raises(ValueError):
        ImageCache(workers=-1)


@pytest.mark.parametrize("workers", [1, 3])
def test_prefetched_frames_equal_frames_decoded_on_demand(tmp_path: Path, workers: int) -> None:
    paths = _images(tmp_path, 6, size=(96, 80))
    with ImageCache(capacity=16, workers=workers) as cache:
        assert cache.prefetch([(p, "image") for p in paths]) == 6
        assert cache.prefetch([(p, "image") for p in paths]) == 0  # already pending
        frames = [cache.frame(p) for p in paths]
        assert cache.prefetched == 6 and cache.decodes == 6
        # the worker's decoded image joined the rgb LRU: no second decode
        assert np.array_equal(np.asarray(cache.rgb(paths[0])), np.asarray(load_rgb(paths[0])))
        assert cache.decodes == 6
        assert cache.prefetch([(p, "image") for p in paths]) == 0  # already framed
    for p, frame in zip(paths, frames, strict=True):
        assert frame.shape == (500, 500, 3) and frame.dtype == np.uint8
        assert np.array_equal(frame, to_frame(load_rgb(p)))


def test_prefetched_rgb_and_a_frame_job_claimed_by_rgb(tmp_path: Path) -> None:
    paths = _images(tmp_path, 3)
    with ImageCache(capacity=8, workers=2) as cache:
        cache.prefetch([(paths[0], "a"), (paths[1], "b")], kind="rgb")
        cache.prefetch([(paths[2], "c")], kind="frame")
        assert np.array_equal(np.asarray(cache.rgb(paths[0])), np.asarray(load_rgb(paths[0])))
        assert np.array_equal(np.asarray(cache.rgb(paths[2])), np.asarray(load_rgb(paths[2])))
        assert np.array_equal(cache.frame(paths[2]), to_frame(load_rgb(paths[2])))  # kept from the frame job
        cache.rgb(paths[1])
        assert cache.decodes == 3 and cache.prefetched == 3
        with pytest.raises(ValueError, match="kind"):
            cache.prefetch([(paths[0], "a")], kind="mask")


def test_a_failed_background_decode_raises_where_the_image_is_used(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with ImageCache(workers=1) as cache:
        cache.prefetch([(bad, "s1: source_image")])
        with pytest.raises(DataError, match="s1: source_image"):
            cache.frame(bad, "s1: source_image")
    with pytest.raises(DataError, match="s1: source_image"):
        ImageCache().frame(bad, "s1: source_image")


def test_without_workers_prefetch_does_nothing(tmp_path: Path) -> None:
    paths = _images(tmp_path, 2)
    cache = ImageCache()
    assert cache.prefetch([(p, "image") for p in paths]) == 0
    assert cache.decodes == 0 and cache._pool is None
    cache.frame(paths[0])
    assert cache.decodes == 1 and cache.prefetched == 0


def test_unclaimed_jobs_are_bounded_and_close_stops_the_threads(tmp_path: Path) -> None:
    paths = _images(tmp_path, 10)
    before = {t.name for t in threading.enumerate()}
    cache = ImageCache(capacity=2, workers=2)
    cache.prefetch([(p, "image") for p in paths])
    assert len(cache._pending) <= 4  # 2 x capacity: the oldest unclaimed jobs were dropped
    cache.close()
    assert cache._pending == {} and cache._pool is None
    left = {t.name for t in threading.enumerate()} - before
    assert not any(name.startswith("bpm-decode") for name in left)
    assert np.array_equal(cache.frame(paths[-1]), to_frame(load_rgb(paths[-1])))  # still usable


def test_default_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_ENV, "0")
    assert default_workers() == 0
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert default_workers() == 3
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(ValueError, match=WORKERS_ENV):
        default_workers()
    monkeypatch.delenv(WORKERS_ENV)
    assert 1 <= default_workers() <= 4


def test_env_int(monkeypatch: pytest.MonkeyPatch) -> None:
    from bpm_lib.envvars import env_int

    monkeypatch.delenv("BPM_TEST_INT", raising=False)
    assert env_int("BPM_TEST_INT", 7, minimum=1) == 7
    monkeypatch.setenv("BPM_TEST_INT", " 3 ")
    assert env_int("BPM_TEST_INT", 7, minimum=1) == 3
    monkeypatch.setenv("BPM_TEST_INT", "0")
    with pytest.raises(ValueError, match="BPM_TEST_INT must be at least 1, got 0"):
        env_int("BPM_TEST_INT", 7, minimum=1)
    assert env_int("BPM_TEST_INT", 7) == 0
    monkeypatch.setenv("BPM_TEST_INT", "x")
    with pytest.raises(ValueError, match="BPM_TEST_INT must be an integer, got 'x'"):
        env_int("BPM_TEST_INT", 7)
