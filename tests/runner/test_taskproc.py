"""bpm_lib._taskproc: the exit-time heap freeze is installed in a KFP task process only."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          check=True, timeout=120)
    return proc.stdout.strip()


def test_not_installed_outside_a_task_process() -> None:
    from bpm_lib import _taskproc

    assert _taskproc.in_task_process() is False
    assert _taskproc.install() is False


def test_installed_when_main_is_the_kfp_executor() -> None:
    # As `python -m kfp.dsl.executor_main` starts: __main__'s spec names the executor
    # module before any component code imports bpm_lib.
    out = _run("""
        import atexit, gc, sys, types
        sys.modules["__main__"].__spec__ = types.SimpleNamespace(name="kfp.dsl.executor_main")
        before = atexit._ncallbacks()
        import bpm_lib
        from bpm_lib import _taskproc
        assert _taskproc.in_task_process() and _taskproc.install()
        assert atexit._ncallbacks() == before + 1  # once, however often install() is called
        print("ok", gc.get_freeze_count())
    """)
    assert out == "ok 0"  # nothing frozen before exit


def test_the_freeze_runs_at_exit_after_other_work_finished(tmp_path: Path) -> None:
    marker = tmp_path / "frozen.txt"
    _run(f"""
        import atexit, gc, sys, types
        sys.modules["__main__"].__spec__ = types.SimpleNamespace(name="kfp.dsl.executor_main")
        atexit.register(lambda: open({str(marker)!r}, "w").write(str(gc.get_freeze_count())))
        import bpm_lib  # registers after the line above, so it runs first (LIFO)
        junk = [[i] for i in range(10000)]
    """)
    assert int(marker.read_text()) > 10000  # the heap was frozen, then the earlier handler still ran
