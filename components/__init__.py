"""Kubeflow components: thin wrappers, one stage each, over :mod:`bpm_lib.runner.steps`.

Every component runs in the one image built from the repository's Dockerfile
(:data:`IMAGE`, tagged with the package version). A component body only reads its
inputs, calls one bpm_lib step and writes its outputs.
"""

from __future__ import annotations

import os

from bpm_lib import __version__

DEFAULT_IMAGE = f"ghcr.io/bpm-eval/bpm-eval:{__version__}"
IMAGE = os.environ.get("BPM_IMAGE", DEFAULT_IMAGE)
