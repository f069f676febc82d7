"""bpm-eval: the BPM metric for instruction-based image editing."""

from bpm_lib import _taskproc

__version__ = "0.1.0"

_taskproc.install()  # a no-op outside a Kubeflow task process (see bpm_lib/_taskproc.py)
