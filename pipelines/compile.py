"""Compile every pipeline module of this folder to ``<module>.yaml`` beside it.

    python -m pipelines.compile            # (re)write the YAML files
    python -m pipelines.compile --check    # exit 1 listing files that differ from a fresh compile

A pipeline module is a ``*.py`` file here whose name does not start with ``_`` (and is
not this script) holding exactly one module-level ``@dsl.pipeline``. The output is
deterministic: the component image is the default one (``BPM_IMAGE`` is ignored unless
``--image`` is given) and the bytes depend only on the sources and the KFP version.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "pipelines"
SKIP = {"compile"}


def pipeline_modules(folder: Path = HERE) -> list[str]:
    """Names of the pipeline modules in ``folder`` (sorted)."""
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem not in SKIP)


def module_pipeline(module_name: str):  # type: ignore[no-untyped-def]
    """The one module-level pipeline (a KFP GraphComponent) defined in ``pipelines.<module_name>``."""
    from kfp.dsl.graph_component import GraphComponent

    module = importlib.import_module(f"{PACKAGE}.{module_name}")
    found = {name: obj for name, obj in vars(module).items()
             if isinstance(obj, GraphComponent) and getattr(obj.pipeline_func, "__module__", None) == module.__name__}
    if len(found) != 1:
        raise ValueError(f"pipeline module {module.__name__} must define exactly one module-level "
                         f"@dsl.pipeline, found {sorted(found) or 'none'}")
    return next(iter(found.values()))


def compile_module(module_name: str, out_dir: Path) -> Path:
    from kfp import compiler

    out = Path(out_dir) / f"{module_name}.yaml"
    compiler.Compiler().compile(module_pipeline(module_name), str(out))
    return out


def compile_all(out_dir: Path = HERE, modules: Sequence[str] | None = None) -> list[Path]:
    """Compile ``modules`` (default: every pipeline module) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [compile_module(name, out_dir) for name in (modules if modules is not None else pipeline_modules())]


def drifted(folder: Path = HERE) -> list[tuple[str, str]]:
    """(file, reason) for each compiled YAML in ``folder`` that a fresh compile would change,
    that is missing, or whose pipeline module no longer exists."""
    problems: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bpm-compile-") as tmp:
        fresh = {p.name: p for p in compile_all(Path(tmp))}
        for name, path in sorted(fresh.items()):
            committed = folder / name
            if not committed.exists():
                problems.append((name, "missing"))
                continue
            new, old = path.read_text(encoding="utf-8"), committed.read_text(encoding="utf-8")
            if new != old:
                diff = difflib.unified_diff(old.splitlines(), new.splitlines(), f"{name} (committed)",
                                            f"{name} (fresh)", lineterm="", n=1)
                problems.append((name, "differs:\n" + "\n".join(list(diff)[:40])))
        for stale in sorted(p.name for p in folder.glob("*.yaml") if p.name not in fresh):
            problems.append((stale, "no pipeline module produces it"))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compile to a temporary folder and exit 1 if any committed YAML differs")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write the YAML (default: pipelines/)")
    parser.add_argument("--image", default=None,
                        help="component image (default: ghcr.io/bpm-eval/bpm-eval:<version>; BPM_IMAGE is ignored)")
    args = parser.parse_args(argv)
    if args.image:
        os.environ["BPM_IMAGE"] = args.image
    else:
        os.environ.pop("BPM_IMAGE", None)
    import components

    wanted = args.image or components.DEFAULT_IMAGE
    if components.IMAGE != wanted:  # imported earlier in this process with another BPM_IMAGE
        print(f"pipelines.compile: components were imported with image {components.IMAGE!r}, not {wanted!r}; "
              "run it in a fresh process", file=sys.stderr)
        return 2
    if args.check:
        problems = drifted(args.out_dir)
        for name, reason in problems:
            print(f"drifted: {args.out_dir / name}: {reason}", file=sys.stderr)
        if problems:
            print("run `python -m pipelines.compile` and commit the result", file=sys.stderr)
            return 1
        print(f"pipelines: {len(pipeline_modules())} compiled YAML file(s) up to date", file=sys.stderr)
        return 0
    for path in compile_all(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
