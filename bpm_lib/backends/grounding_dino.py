"""GroundingDINO open-vocabulary detector through transformers (BPM_SPEC §3).

``GroundingDinoDetector`` loads ``AutoProcessor`` + ``AutoModelForZeroShotObjectDetection``
from a hub id, a local ``save_pretrained`` folder or an ``s3://`` prefix (see
:mod:`bpm_lib.backends.model_source`), or takes an already-built model and processor.
``TinyRandomGroundingDinoDetector`` builds a tiny random-weight model in memory from
``bpm_lib/configs/tiny_grounding_dino.json`` for the offline ``tiny-random`` preset.

torch/transformers are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpm_lib.backends.base import DETECTORS
from bpm_lib.backends.device import dtype_name, pick_device, pick_dtype
from bpm_lib.backends.model_source import (
    config_digest,
    load_model_and_processor,
    read_packaged_config,
)
from bpm_lib.types import Detection

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "IDEA-Research/grounding-dino-tiny"
TINY_CONFIG = "tiny_grounding_dino.json"

# GroundingDINO hard-codes the bert-base-uncased ids of these tokens (text masks between
# "."-separated phrases), so a generated vocabulary must put them at the same ids.
_BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def normalize_phrase(phrase: str) -> str:
    """GroundingDINO's expected text: lower case, single spaces, ending in ``"."``."""
    if not isinstance(phrase, str):
        raise TypeError(f"phrase must be a string, got {type(phrase).__name__}")
    text = " ".join(phrase.lower().split()).rstrip(" .")
    if not text:
        raise ValueError(f"phrase must contain words to detect, got {phrase!r}")
    return text + "."


def _check_threshold(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}") from e
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


class GroundingDinoDetector:
    """Open-vocabulary detector: one phrase per image → boxes, best first.

    ``model`` is a model source (hub id, local folder, ``s3://`` prefix) or an already
    built ``GroundingDinoForObjectDetection`` (then ``processor`` is required and
    ``model_id`` names it). ``box_threshold``/``text_threshold`` are the reference's
    0.3/0.25. Boxes are clipped to the image; a box entirely outside it is dropped.
    ``meaningless=True`` marks random weights in :meth:`identity`. ``cache_dir`` is where
    ``s3://`` sources are downloaded (default ``$BPM_CACHE_DIR/models``). ``device`` and
    ``dtype`` default to ``auto`` (see :mod:`bpm_lib.backends.device`: bfloat16 on recent
    GPUs; pass ``dtype="float32"`` for strict parity with the fp32 reference).
    """

    name = "grounding-dino"

    def __init__(
        self,
        model: str | Any = DEFAULT_MODEL,
        *,
        processor: Any | None = None,
        revision: str | None = None,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        meaningless: bool = False,
        model_id: str | None = None,
    ) -> None:
        self.box_threshold = _check_threshold("box_threshold", box_threshold)
        self.text_threshold = _check_threshold("text_threshold", text_threshold)
        self.batch_size = _check_batch_size(batch_size)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.revision = revision
        self.meaningless = bool(meaningless)
        self.forward_calls = 0
        model_loader: Any = None
        processor_loader: Any = None
        if isinstance(model, str):
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

            model_loader, processor_loader = AutoModelForZeroShotObjectDetection.from_pretrained, AutoProcessor.from_pretrained
        loaded, self.processor, self.model_id = load_model_and_processor(
            model, processor, model_id, model_loader=model_loader, processor_loader=processor_loader,
            what="GroundingDINO detector", cache_dir=cache_dir, revision=revision, dtype=self.dtype,
        )
        self.model = loaded.to(device=self.device, dtype=self.dtype).eval()
        tokenizer = self.processor.tokenizer
        specials = sorted(set(tokenizer.all_special_tokens), key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in specials)) if specials else None

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_id,
            "revision": self.revision,
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
            "dtype": dtype_name(self.dtype),
            "meaningless": self.meaningless,
        }

    def detect(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[list[Detection]]:
        """Detections of ``phrases[i]`` in ``images[i]``, highest score first."""
        if len(images) != len(phrases):
            raise ValueError(f"images and phrases must have the same length, got {len(images)} and {len(phrases)}")
        texts = [normalize_phrase(p) for p in phrases]
        out: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            out.extend(self._detect_batch(list(images[start:stop]), texts[start:stop], list(phrases[start:stop])))
        return out

    def _label(self, raw: str, fallback: str) -> str:
        text = self._special_re.sub(" ", raw) if self._special_re is not None else raw
        # A lone word piece decodes as "##x"; show it as the text it stands for.
        text = " ".join(w.removeprefix("##") for w in text.split()).strip(" .")
        return text or fallback

    def _detect_batch(self, images: list[Image.Image], texts: list[str], phrases: list[str]) -> list[list[Detection]]:
        import torch

        rgb = [img if img.mode == "RGB" else img.convert("RGB") for img in images]
        # Text of different lengths is padded; images are padded by the image processor
        # (pixel_mask tells the model which pixels are real).
        inputs = self.processor(images=rgb, text=texts, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        self.forward_calls += 1
        # Post-processing runs on the CPU in float32, whatever the model's device and dtype.
        outputs.logits = outputs.logits.float().cpu()
        outputs.pred_boxes = outputs.pred_boxes.float().cpu()
        results = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"].cpu(),
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(img.height, img.width) for img in rgb],
        )
        batch: list[list[Detection]] = []
        for img, phrase, result in zip(rgb, phrases, results, strict=True):
            w, h = img.width, img.height
            dets = []
            boxes = result["boxes"].detach().cpu().tolist()
            scores = result["scores"].detach().cpu().tolist()
            for box, score, label in zip(boxes, scores, result["text_labels"], strict=True):
                x0, y0 = min(max(box[0], 0.0), w), min(max(box[1], 0.0), h)
                x1, y1 = min(max(box[2], x0), w), min(max(box[3], y0), h)
                if x1 <= x0 or y1 <= y0:
                    continue  # entirely outside the image
                s = min(max(float(score), 0.0), 1.0)
                dets.append(Detection.from_pixels((x0, y0, x1, y1), s, self._label(label, phrase.strip()), w, h))
            dets.sort(key=lambda d: d.score, reverse=True)
            batch.append(dets)
        return batch


def tiny_char_vocab(characters: str, punctuation: str) -> dict[str, int]:
    """A WordPiece vocabulary of single characters (so any phrase gets distinct tokens)
    with the special-token ids GroundingDINO expects (those of bert-base-uncased)."""
    size = max(_BERT_SPECIAL_IDS.values()) + 1
    tokens = [f"[unused{i}]" for i in range(size)]
    for token, idx in _BERT_SPECIAL_IDS.items():
        tokens[idx] = token
    pieces = [c for c in punctuation + characters if c not in _BERT_SPECIAL_IDS]
    pieces += [f"##{c}" for c in characters]
    free = [i for i in range(size) if i not in _BERT_SPECIAL_IDS.values() and i > _BERT_SPECIAL_IDS["[MASK]"]]
    if len(pieces) > len(free):
        raise ValueError(f"tiny vocabulary has room for {len(free)} pieces, got {len(pieces)}")
    for idx, piece in zip(free[: len(pieces)], pieces, strict=True):
        tokens[idx] = piece
    if len(set(tokens)) != len(tokens):
        raise ValueError("tiny vocabulary has duplicate tokens (a character listed twice?)")
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_grounding_dino(seed: int | None = None, config: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Tiny random GroundingDINO ``(model, processor)`` from the packaged JSON config.

    Deterministic for a given ``seed`` (default: the config's) and does not touch the
    global torch RNG state.
    """
    import torch
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    cfg = config if config is not None else read_packaged_config(TINY_CONFIG)
    seed = int(cfg.get("seed", 0)) if seed is None else int(seed)
    vocab = tiny_char_vocab(cfg["tokenizer"]["characters"], cfg["tokenizer"]["punctuation"])
    model_kwargs = json.loads(json.dumps(cfg["model"]))
    model_kwargs["text_config"]["vocab_size"] = len(vocab)
    model_cfg = GroundingDinoConfig(**model_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(model_cfg).eval()
    gain = float(cfg.get("init", {}).get("decoder_layer_norm_gain", 1.0))
    with torch.no_grad():
        # The decoder's final LayerNorm output is dotted with the text features to give the
        # logits; a gain < 1 keeps random logits away from sigmoid saturation.
        model.model.decoder.layer_norm.weight.mul_(gain)
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    image_processor = GroundingDinoImageProcessor(**cfg["image_processor"])
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


class TinyRandomGroundingDinoDetector(GroundingDinoDetector):
    """Tiny random-weight GroundingDINO built in memory (offline; outputs meaningless).

    Default thresholds come from the config's ``defaults``: they are chosen so that random
    weights still give a mix of found and not-found phrases (see the JSON description).
    """

    name = "tiny-random"

    def __init__(
        self,
        *,
        seed: int | None = None,
        box_threshold: float | None = None,
        text_threshold: float | None = None,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 8,
    ) -> None:
        cfg = read_packaged_config(TINY_CONFIG)
        self.seed = int(cfg.get("seed", 0)) if seed is None else int(seed)
        model, processor = build_tiny_grounding_dino(self.seed, cfg)
        defaults = cfg.get("defaults", {})
        super().__init__(
            model,
            processor=processor,
            box_threshold=defaults["box_threshold"] if box_threshold is None else box_threshold,
            text_threshold=defaults["text_threshold"] if text_threshold is None else text_threshold,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            meaningless=True,
            model_id=f"tiny-random:{TINY_CONFIG}@{config_digest(cfg)}",
        )

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "seed": self.seed}


DETECTORS.add("grounding-dino", GroundingDinoDetector, "GroundingDINO (transformers), default grounding-dino-tiny")
DETECTORS.add("tiny-random", TinyRandomGroundingDinoDetector, "tiny random-weight GroundingDINO (offline, meaningless)")
