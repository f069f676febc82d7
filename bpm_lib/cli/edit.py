"""``bpm edit``: run one candidate's editor over an EvalSet and write its EditSet."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bpm_lib.types import Sample

# flag → keyword of the editor factory; only flags the user sets are passed on.
EDITOR_FLAGS = (
    ("steps", "num_inference_steps"),
    ("guidance_scale", "guidance_scale"),
    ("image_guidance_scale", "image_guidance_scale"),
    ("scheduler", "scheduler"),
    ("max_side", "max_side"),
    ("device", "device"),
    ("dtype", "dtype"),
    ("cache_dir", "cache_dir"),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="edit every sample of an EvalSet with one candidate checkpoint (→ an EditSet)",
        description=(
            "Run the editor of one candidate over every sample of an EvalSet and write an "
            "EditSet folder (editset.json, edits.jsonl, images/). Re-running into the same "
            "--out resumes: finished samples are skipped, failed ones are tried again. Each "
            "sample's seed is derived from --seed and its id. The exit code is 1 when a sample "
            "failed (unless --allow-errors) or when nothing could be edited."
        ),
    )
    p.add_argument("--evalset", required=True, metavar="DIR",
                   help="EvalSet folder (or s3:// prefix) holding manifest.jsonl")
    p.add_argument("--editor", required=True, metavar="NAME",
                   help="editor backend: ip2p, openai, precomputed (see `bpm backends`)")
    p.add_argument("--checkpoint", required=True, metavar="URI",
                   help="ip2p: local dir, hub id, s3://…, models:/name/version, models:/name@alias, runs:/…; "
                        "openai: the model name; precomputed: the folder of edited images")
    p.add_argument("--candidate", required=True, metavar="NAME", help="name of this candidate in reports")
    p.add_argument("--out", required=True, metavar="DIR", help="EditSet folder to write (or resume)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="run seed (default 0)")
    g = p.add_argument_group("editor options (generation flags apply to ip2p)")
    g.add_argument("--steps", type=int, default=None, metavar="N", help="denoising steps (default 20)")
    g.add_argument("--guidance-scale", type=float, default=None, metavar="F", help="text guidance (default 7.5)")
    g.add_argument("--image-guidance-scale", type=float, default=None, metavar="F",
                   help="image guidance, >= 1 (default 1.5)")
    g.add_argument("--scheduler", default=None, metavar="NAME",
                   help="replace the checkpoint's scheduler, e.g. euler_ancestral, ddim, pndm")
    g.add_argument("--max-side", type=int, default=None, metavar="PX",
                   help="edit at most this size on the longer side, a multiple of 64 (default 512)")
    g.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--dtype", default=None, help="auto, float32, float16, bfloat16 (default auto)")
    g.add_argument("--cache-dir", default=None, metavar="DIR", help="download cache for s3:// and MLflow checkpoints")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other editor option (VALUE parsed as JSON when it is JSON), e.g. base_url=http://…")
    m = p.add_argument_group("mask guidance (BPM_SPEC §9)")
    m.add_argument("--mask-guidance", action="store_true",
                   help="paste each edit into the source outside the dilated edit mask "
                        "(mask-aware editors also receive the mask)")
    m.add_argument("--dilate-px", type=int, default=16, metavar="PX", help="mask dilation in pixels (default 16)")
    m.add_argument("--masks", default=None, metavar="FILE",
                   help="source-side localization JSONL to take masks from (default: the manifest's reference_mask)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples")
    p.add_argument("--allow-errors", action="store_true", help="exit 0 even if some samples failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--option must be KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def editor_options(args: argparse.Namespace, factory: Any) -> dict[str, Any]:
    """The keyword arguments for the editor factory from the flags the user set;
    ``ValueError`` naming the flag when this editor has no such option."""
    try:
        params: Mapping[str, inspect.Parameter] = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options: dict[str, Any] = {}
    for flag, keyword in EDITOR_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        if not takes_any and keyword not in params:
            raise ValueError(f"--{flag.replace('_', '-')} is not an option of the {args.editor!r} editor")
        options[keyword] = value
    for text in args.option:
        key, value = _parse_option(text)
        if not takes_any and key not in params:
            known = sorted(k for k in params if k not in ("self", "checkpoint"))
            raise ValueError(f"--option {key!r} is not an option of the {args.editor!r} editor (options: {known})")
        options[key] = value
    return options


def run(args: argparse.Namespace) -> int:
    import itertools

    import bpm_lib.backends.editors  # noqa: F401 - registers the built-in editors
    from bpm_lib.backends.base import EDITORS
    from bpm_lib.io import storage
    from bpm_lib.io.manifest import MANIFEST_NAME, read_manifest
    from bpm_lib.runner.generate import MaskGuidance, generate_edits, load_masks_jsonl

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    entry = EDITORS.get(args.editor)
    options = editor_options(args, entry.factory)
    evalset = str(args.evalset)
    manifest = evalset.rstrip("/") + "/" + MANIFEST_NAME if storage.is_s3(evalset) else str(
        storage.safe_join(evalset, MANIFEST_NAME, what="--evalset")
    )
    masks = load_masks_jsonl(args.masks) if args.masks else None
    if masks is not None and not args.mask_guidance:
        raise ValueError("--masks needs --mask-guidance")
    guidance = (
        MaskGuidance(dilate_px=args.dilate_px, mask_source="localization" if masks is not None else "reference")
        if args.mask_guidance
        else None
    )
    editor = EDITORS.create(args.editor, checkpoint=args.checkpoint, **options)
    samples: Iterable[Sample] = read_manifest(manifest)
    if args.limit is not None:
        samples = itertools.islice(samples, args.limit)
    summary = generate_edits(
        samples,
        editor,
        args.out,
        candidate=args.candidate,
        run_seed=args.seed,
        mask_guidance=guidance,
        masks=masks,
        progress=not args.no_progress,
    )
    print(json.dumps(summary.to_dict(), ensure_ascii=False, sort_keys=True), flush=True)
    if summary.failed:
        print(
            f"bpm edit: {summary.failed} of {summary.total} samples failed (see {args.out}/edits.jsonl)",
            file=sys.stderr,
        )
    if summary.total and summary.edited + summary.skipped == 0:
        return 1
    return 1 if summary.failed and not args.allow_errors else 0
