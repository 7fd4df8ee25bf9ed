"""What ``tools/predict.py`` does, from a checked config to the files in ``--out-dir``: the
output folder and the inputs checked before anything is loaded, the detector and its dataset's
class mapping through the engine builders, the per-class thresholds chosen, the loop, then
``results.json`` and ``index.json`` written through :mod:`detmine.safe_io`."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detmine.console import Progress, log, warn
from detmine.errors import ConfigError, DataError

if TYPE_CHECKING:
    from detmine.predict.inputs import ResolvedInputs
    from detmine.predict.runner import Predictor

THRESHOLD_MODES = ("auto", "none")
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")


def split_overrides(arguments: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(inputs, overrides)`` of the positional arguments after CONFIG and CHECKPOINT: a
    ``key.sub=value`` argument is an override unless a file or folder of that name exists."""
    inputs: list[str] = []
    overrides: list[str] = []
    for arg in arguments:
        (overrides if _OVERRIDE.match(arg) and not Path(arg).exists() else inputs).append(arg)
    return inputs, overrides


@dataclass
class PredictSettings:
    """The choices of a prediction run (``tools/predict.py``'s flags).

    Attributes:
        out_dir: the output folder (pictures, ``results.json``, ``index.json``).
        score_thresh: detections below it are neither kept nor drawn (None: all that
            ``predict`` returns under ``eval.postprocess`` and the class thresholds).
        thresholds: ``auto`` (``eval.postprocess.class_thresholds`` when set, else the
            ``thresholds.json`` next to the checkpoint when there is one), ``none``, or the path
            of a thresholds file.
        batch_size: images per batch (None: ``eval.batch_size``).
        every_n_frames: of a video, frames 0, n, 2n ... are read.
        pictures: draw the detections (pictures, annotated videos).
        progress: show a progress bar.
    """

    out_dir: Path
    score_thresh: float | None = None
    thresholds: str = "auto"
    batch_size: int | None = None
    every_n_frames: int = 1
    pictures: bool = True
    progress: bool = True


@dataclass
class PredictSummary:
    """What a run did: images and video frames predicted, detections kept, the files written and
    the skipped-input line (None when nothing was skipped)."""

    num_images: int
    num_frames: int
    num_detections: int
    results_path: Path
    index_path: Path
    skipped: str | None


def read_thresholds_flag(value: str) -> list[float] | None:
    """``--thresholds PATH`` read (a folder means its ``thresholds.json``); None for the modes.

    Raises:
        ConfigError: a missing or malformed file, one line naming it.
    """
    from detmine.evaluation.thresholds import load_class_thresholds

    if value in THRESHOLD_MODES:
        return None
    if not Path(value).exists():
        raise ConfigError(f"--thresholds {value}: no such file (or use auto / none)")
    try:
        return load_class_thresholds(value)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("eval.postprocess.class_thresholds", "--thresholds", 1)) from None


def choose_class_thresholds(
    mode: str, checkpoint: str | Path, configured: list[float] | str | None
) -> tuple[list[float] | None, str | None]:
    """The per-class thresholds of a run and where they came from (None: none apply).

    ``auto``: ``configured`` (``eval.postprocess.class_thresholds``) when set, else the
    ``thresholds.json`` the evaluation wrote next to ``checkpoint`` when it exists; ``none``:
    none; otherwise ``mode`` is a thresholds file (:func:`read_thresholds_flag`).
    """
    from detmine.evaluation.thresholds import THRESHOLDS_FILE, load_class_thresholds

    if mode == "none":
        return None, None
    if mode != "auto":
        return read_thresholds_flag(mode), mode
    if configured is not None:
        return load_class_thresholds(configured), "eval.postprocess.class_thresholds"
    beside = Path(checkpoint).resolve().parent / THRESHOLDS_FILE
    if beside.is_file():
        return load_class_thresholds(beside), str(beside)
    return None, None


def predict_to_folder(
    cfg: Any,
    checkpoint: str | Path,
    inputs: Sequence[str],
    settings: PredictSettings,
    *,
    weights: str = "auto",
    trusted: bool = False,
    device: str | None = None,
    config_path: str | Path | None = None,
) -> PredictSummary:
    """Run the checkpoint over ``inputs`` (files, folders, globs, videos) and write the results.

    Checked before the checkpoint is read: the output folder, that the inputs name an image or
    a video, a ``--thresholds`` file. The model runs at the recipe's evaluation geometry (the
    ``eval`` transform of the configured dataset's evaluation split, padded as the model
    declares); category ids are the dataset's original ones.

    Raises:
        DetmineError: one line for a user error (no images, an unwritable folder, a checkpoint
            that does not fit, thresholds for another number of classes, nothing readable).
    """
    from detmine.distributed import pick_device
    from detmine.engine import builders
    from detmine.evaluation.thresholds import predict_options
    from detmine.predict.inputs import resolve_inputs
    from detmine.predict.results import INDEX_FILE, RESULTS_FILE, index_document
    from detmine.predict.runner import Predictor
    from detmine.safe_io import atomic_write_text, check_writable, prepare_output_dir

    out_dir = Path(settings.out_dir)
    check_writable(out_dir, "output folder", where="--out-dir", folder=True)
    resolved = resolve_inputs(inputs, exclude=out_dir)
    for item in resolved.items:
        if item.problem:
            warn(f"input {item.text}: {item.problem}")
    read_thresholds_flag(settings.thresholds)  # a bad file fails before the checkpoint is read
    run_device = pick_device(device or cfg.train.device)
    model, dataset, chosen = builders.detector_for_split(
        cfg, cfg.data.val_split, checkpoint, weights=weights, trusted=trusted, device=run_device
    )
    thresholds, source = choose_class_thresholds(
        settings.thresholds, checkpoint, cfg.eval.postprocess.class_thresholds
    )
    if thresholds is not None and len(thresholds) != dataset.num_classes:
        raise ConfigError(
            f"{source}: {len(thresholds)} class thresholds for a model of {dataset.num_classes} classes"
        )
    if source is not None and settings.thresholds == "auto" and source != "eval.postprocess.class_thresholds":
        log(f"per-class thresholds: {source} (next to the checkpoint; --thresholds none ignores it)")
    options = predict_options({**cfg.eval.postprocess.options(), "class_thresholds": thresholds})
    batch_size = settings.batch_size or cfg.eval.batch_size
    videos = f" and {_count(len(resolved.videos), 'video')}" if resolved.videos else ""
    log(
        f"predicting {_count(len(resolved.images), 'image')}{videos} with {cfg.model.name} "
        f"({chosen.which} weights) "
        f"on {run_device}, batch size {batch_size}"
    )
    prepare_output_dir(out_dir)
    total = len(resolved.images) + sum(_frames_expected(v, settings.every_n_frames) for v in resolved.videos)
    progress = Progress(total, "predicting", unit="img", enabled=settings.progress)
    predictor = Predictor(
        model,
        transform=getattr(dataset, "transform", None),
        geometry=builders.batch_geometry(model),
        predict_options=options,
        class_names=dataset.class_names,
        category_ids=dataset.contiguous_to_category_id,
        out_dir=out_dir if settings.pictures else None,
        score_thresh=settings.score_thresh,
        device=run_device,
        on_images=progress.update,
    )
    num_images, num_frames, skipped = _run(predictor, resolved, settings, batch_size, cfg)
    progress.close()
    if num_images + num_frames == 0:
        raise DataError(f"no input could be read: {skipped}")
    info = {
        "config": None if config_path is None else str(config_path),
        "checkpoint": str(Path(checkpoint).resolve()),
        "weights": chosen.which,
        "model": cfg.model.name,
        "device": str(run_device),
        "class_thresholds": source,
        "score_thresh": settings.score_thresh,
        "every_n_frames": settings.every_n_frames,
        "postprocess": options,
        "num_images": num_images,
        "num_frames": num_frames,
        "num_skipped": sum(1 for e in predictor.images if e.get("skipped")) + len(predictor.skipped_videos),
    }
    categories = {k: (c, dataset.class_names[k - 1]) for k, c in dataset.contiguous_to_category_id.items()}
    images = sorted(predictor.images, key=lambda e: e["id"])
    index = index_document(_input_ids(resolved, images), images, categories, info)
    results_path, index_path = out_dir / RESULTS_FILE, out_dir / INDEX_FILE
    atomic_write_text(results_path, json.dumps(predictor.results), what="results file", where="--out-dir")
    atomic_write_text(index_path, json.dumps(index, indent=1), what="index file", where="--out-dir")
    return PredictSummary(num_images, num_frames, len(predictor.results), results_path, index_path, skipped)


def _run(
    predictor: Predictor, resolved: ResolvedInputs, settings: PredictSettings, batch_size: int, cfg: Any
) -> tuple[int, int, str | None]:
    """The images (ids 1..N in input order), then each video's frames in turn. Returns the
    images read, the frames read and the skipped-input line (None when nothing was skipped)."""
    num_images, lines = 0, []
    if resolved.images:
        loader = predictor.run_images(
            resolved.images, batch_size=batch_size, num_workers=cfg.data.num_workers, seed=cfg.train.seed
        )
        num_images = len(resolved.images) - loader.num_dropped_samples
        lines.append(loader.skipped_summary())
    next_id, num_frames = len(resolved.images) + 1, 0
    for video in resolved.videos:
        frames = predictor.run_video(
            video, first_id=next_id, batch_size=batch_size, every=settings.every_n_frames
        )
        next_id, num_frames = next_id + frames, num_frames + frames
    lines.append(predictor.skipped_videos_summary(len(resolved.videos)))
    return num_images, num_frames, "; ".join(line for line in lines if line) or None


def _input_ids(resolved: ResolvedInputs, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per INPUT ``{"input", "kind", "image_ids"}`` (and ``"problem"``) from the images' index
    entries (``file_name``, or ``video`` for a frame)."""
    ids_of: dict[str, list[int]] = {}
    for entry in images:
        ids_of.setdefault(str(Path(entry.get("video", entry["file_name"])).resolve()), []).append(entry["id"])
    return [
        {
            "input": item.text,
            "kind": item.kind,
            "image_ids": [i for f in item.images + item.videos for i in ids_of.get(str(f.resolve()), [])],
            **({"problem": item.problem} if item.problem else {}),
        }
        for item in resolved.items
    ]


def _frames_expected(path: Path, every: int) -> int:
    """The frames of a video that will be read (0 when the file does not say)."""
    from detmine.predict.inputs import VideoFrames

    with VideoFrames(path) as video:
        return -(-video.frame_count // every)


def print_summary(summary: PredictSummary, settings: PredictSettings) -> None:
    """The closing lines: what was found, where it went, and the skipped inputs (a warning)."""
    frames = f" and {_count(summary.num_frames, 'video frame')}" if summary.num_frames else ""
    floor = f" at score >= {settings.score_thresh}" if settings.score_thresh is not None else ""
    log(
        f"{_count(summary.num_detections, 'detection')}{floor} "
        f"on {_count(summary.num_images, 'image')}{frames}"
    )
    log(f"results: {summary.results_path}")
    log(f"index: {summary.index_path}")
    if settings.pictures:
        log(f"pictures: {settings.out_dir}")
    if summary.skipped:
        warn(summary.skipped)


def _count(n: int, noun: str) -> str:
    """``"1 image"``, ``"3 images"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
