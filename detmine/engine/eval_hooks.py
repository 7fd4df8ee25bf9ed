"""Periodic views of the validation split: COCO evaluation and the validation loss.

Both run every ``period`` iterations (0: only at the end) and after the final iteration
(:class:`~detmine.engine.trainer.PeriodicHook`), on the
EMA weights when there are (as the reported AP) or the model, inside
:func:`~detmine.engine.run_state.preserved_rng`, and give the model back in training mode:
they never change what training does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from detmine import distributed as dist
from detmine.engine.run_state import preserved_rng
from detmine.engine.trainer import PeriodicHook, Trainer, targets_to, unwrap
from detmine.evaluation.views import views_scalars


def _eval_model(trainer: Trainer) -> torch.nn.Module:
    return trainer.ema.module if trainer.ema is not None else unwrap(trainer.model)


class EvaluationHook(PeriodicHook):
    """COCO evaluation (:func:`detmine.evaluation.evaluator.evaluate`) of the validation loader:
    stats and per-class AP as an ``eval`` record and ``eval/*`` TensorBoard items, the result in
    ``trainer.storage["eval"]``, and ``storage["new_best"]`` when AP improved (the checkpoint
    hook then writes ``best.pth``). The evaluation after the final iteration also keeps its
    detections in ``final_detections`` (``{"iteration", "image_ids", "detections"}``, COCO
    results with the dataset's category ids), so the per-image analyses (the ablation tool's
    bootstrap over images) need no second pass over the data."""

    name = "evaluation"

    def __init__(
        self,
        loader: Any,
        dataset: Any,
        *,
        period: int,
        backend: str,
        predict_options: dict[str, Any] | None = None,
        final_detections: str | Path | None = None,
        views: Sequence[tuple[str, Any]] = (),
        train_counts: Any = None,
        files_to: str | Path | None = None,
    ) -> None:
        super().__init__(period)
        self.loader, self.dataset = loader, dataset
        self.final_detections = None if final_detections is None else Path(final_detections)
        self.views, self.train_counts = list(views), train_counts
        self.files_to = None if files_to is None else Path(files_to)
        self.backend = backend
        self.predict_options = dict(predict_options or {})
        self.best_metric: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_metric = state.get("best_metric")

    def run(self, trainer: Trainer) -> None:
        from detmine.evaluation.evaluator import evaluate

        gather = dist.all_gather_object if dist.get_world_size() > 1 else None
        with preserved_rng():
            result = evaluate(
                _eval_model(trainer),
                self.loader,
                self.dataset,
                predict_options=self.predict_options,
                backend=self.backend,
                device=trainer.device,
                gather_fn=gather,
                progress=trainer.is_main,
                views=self.views,
                train_counts=self.train_counts,
            )
        trainer.model.train()
        ap = dist.broadcast_object(float(result.stats["AP"]) if result is not None else None)
        if self.best_metric is None or (ap is not None and ap > self.best_metric):
            self.best_metric = ap
            trainer.storage["new_best"] = True
        if trainer.is_main and result is not None:
            trainer.storage["eval"] = result
            per_class = {f"AP/{name}": float(v) for name, v in result.per_class_ap.items()}
            trainer.events.put_record("eval", {**result.stats, **per_class, **views_scalars(result.views)})
            trainer.events.put_scalars("eval", dict(result.stats))
            self._log_views(trainer, result.views)
            from detmine.evaluation.report import log_evaluation

            log_evaluation(trainer.events, result, trainer.iteration)
            if self.final_detections is not None and trainer.iteration >= trainer.max_iters:
                self._write_detections(result, trainer.iteration)

    def _log_views(self, trainer: Trainer, outputs: dict[str, Any]) -> None:
        """The views' scalars and pictures to TensorBoard; their files into the run folder
        (each evaluation replaces the previous one's, atomically)."""
        from detmine.safe_io import atomic_write_bytes

        for name, out in outputs.items():
            trainer.events.put_scalars(f"eval/{name}", out.scalars)
            for image_name, image in out.images.items():
                trainer.events.put_image(f"eval/{name}/{image_name}", image)
            if self.files_to is not None:
                for file_name, content in out.files.items():
                    data = content.encode("utf-8") if isinstance(content, str) else content
                    atomic_write_bytes(self.files_to / file_name, data, what=f"{name} view file")

    def _write_detections(self, result: Any, iteration: int) -> None:
        from detmine.safe_io import atomic_write_text

        assert self.final_detections is not None

        payload = {"iteration": iteration, "image_ids": result.image_ids, "detections": result.results}
        atomic_write_text(self.final_detections, json.dumps(payload), what="final detections")


class ValidationLossHook(PeriodicHook):
    """The criterion on the validation loader under ``no_grad``: the mean of each loss over
    the batches (and processes), logged as ``type: val`` records and ``val/*`` scalars next to
    the AP. It runs on a copy of the criterion in eval mode -- the EMA normaliser and the
    miners' random generators of the training criterion stay untouched -- and inside
    :func:`preserved_rng`, so training ends with the same weights with or without it."""

    def __init__(self, loader: Any, *, period: int) -> None:
        super().__init__(period)
        self.loader = loader

    @torch.no_grad()
    def run(self, trainer: Trainer) -> None:
        model = _eval_model(trainer)
        was_training = model.training
        criterion = copy.deepcopy(trainer.criterion).eval()
        sums: dict[str, torch.Tensor] = {}
        batches = 0
        with preserved_rng():
            model.eval()
            try:
                for images, targets in self.loader:
                    outputs = model(images.to(trainer.device))
                    losses, _ = criterion(outputs, targets_to(targets, trainer.device))
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v.detach().float()
                    batches += 1
            finally:
                model.train(was_training)
        trainer.model.train()
        count = torch.tensor(float(batches), device=trainer.device)
        totals = dist.reduce_dict({**sums, "_batches": count}, average=False) if sums else {}
        if not totals or not trainer.is_main:
            return
        n = max(1.0, float(totals.pop("_batches")))
        means = {f"loss_{k}": float(v) / n for k, v in totals.items()}
        means = {"loss": sum(means.values()), **means}
        trainer.events.put_record("val", means)
        trainer.events.put_scalars("val", means)
