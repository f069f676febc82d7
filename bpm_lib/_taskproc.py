"""Process-level settings for a Kubeflow task process (``python -m kfp.dsl.executor_main``).

Each KFP task, on a cluster and under ``kfp.local``, is a fresh Python process that
imports torch, transformers or open_clip, runs one stage and exits. With those imports
the interpreter's final garbage collection at exit walks millions of objects: 1.0-1.3 s
per task on this machine, for nothing (the process ends). Freezing the heap from an
``atexit`` hook (run before interpreter finalization, after the task wrote its outputs)
moves every object to the permanent generation, which that last collection skips; exit
then takes about 0.2 s. ``python -m benchmarks --only pipeline`` measures the effect.

Only a task process is touched: in any other process (the CLI, the in-process runner,
tests, a notebook) :func:`install` does nothing. Open files are closed and flushed by
the ``with`` blocks that write them, and other ``atexit`` handlers (MLflow's async
logging) still run.
"""

from __future__ import annotations

import atexit
import gc
import sys

EXECUTOR_MAIN = "kfp.dsl.executor_main"
_installed = False


def in_task_process() -> bool:
    """True when this interpreter was started as KFP's component executor."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == EXECUTOR_MAIN


def install() -> bool:
    """Register the exit-time heap freeze once, in a task process only; True if it is
    registered."""
    global _installed
    if not _installed and in_task_process():
        atexit.register(gc.freeze)
        _installed = True
    return _installed
