"""The iteration-based training loop.

One step: ``model(images) -> HeadOutputs`` (under autocast on GPU) -> ``criterion(outputs,
anchors, targets) -> (losses, record)`` -> backward (GradScaler for fp16) -> optional gradient
clipping -> optimiser step -> per-iteration LR schedule -> optional EMA update -> hooks
(mined-negative pictures, logging, evaluation, checkpoints).

Everything the run needs to continue exactly where it stopped -- weights, optimiser,
scheduler, scaler, EMA, criterion state (the EMA normaliser), data position and the random
generators of every rank -- is in the checkpoint, and each sample's augmentation is seeded
from (seed, epoch, index), so ``train.resume=true`` after an interruption ends with the same
weights as an uninterrupted run, with any number of loader workers.

Ctrl-C (SIGINT) and SIGTERM do not kill the run mid-step: the current step finishes, every
process agrees to stop at the same iteration (a flag all-reduced each step), a checkpoint of
that iteration is written and :class:`~detmine.errors.TrainingInterrupted` is raised (the
tools exit 130 / 143). ``metrics.jsonl`` is cut back to the resumed iteration, so records a
killed run wrote after its last checkpoint are not duplicated.

A new run never mixes with an old one: a run folder that holds checkpoints or metrics is
refused unless the run resumes (``train.resume``) or ``overwrite=True`` clears it first.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from detmine.config import Config, config_to_dict, save_config
from detmine.engine import distributed as dist
from detmine.engine.checkpoint import (
    CheckpointManager,
    DataStream,
    load_model_state,
    preserved_rng,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from detmine.engine.optim import ModelEMA, WarmupScheduler, build_optimizer
from detmine.engine.resume import ConfigChanges, check_resume_config
from detmine.engine.safe_io import atomic_write_text, write_error
from detmine.errors import CheckpointError, ConfigError, NonFiniteError, TrainingInterrupted

__all__ = ["Trainer", "seed_everything", "targets_to", "unwrap"]
from detmine.structures import HeadOutputs, Target


def unwrap(model: nn.Module) -> nn.Module:
    """The module behind DistributedDataParallel."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def targets_to(targets: list[Target], device: torch.device) -> list[Target]:
    """Move the tensors of each target to ``device`` (other fields unchanged)."""
    return [
        {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        for t in targets
    ]


class Trainer:
    """Trains ``model`` with ``criterion`` on ``train_loader`` as the config says.

    Args:
        cfg: the resolved config (``train``, ``eval``, ``vis``, ``output_dir`` are read here).
        model: a ``DenseDetector`` (``forward -> HeadOutputs``, ``predict``), not yet wrapped.
        criterion: ``criterion(outputs, anchors [A, 4], targets) -> (losses, record)``.
        train_loader: yields ``(images uint8 [B, 3, H, W], targets)`` with a seeded sampler.
        val_loader, val_dataset: for periodic and final evaluation (optional).
        iters_per_epoch: batches per epoch on this rank (for ``train.epochs``; default ``len(train_loader)``).
        overwrite: a fresh run into a folder holding an earlier run's checkpoints / metrics
            deletes them first (without it such a folder is refused).
        allow_config_change: resuming with a config that differs from the checkpoint's in
            keys that affect the weights is allowed (see :mod:`detmine.engine.resume`).
        trust_checkpoint: resume from a checkpoint that needs full unpickling (one written by
            detmine 0.1 or by another program); never the default: such a file can run code.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        model: nn.Module,
        criterion: nn.Module,
        train_loader: Any,
        val_loader: Any = None,
        val_dataset: Any = None,
        iters_per_epoch: int | None = None,
        class_names: list[str] | None = None,
        overwrite: bool = False,
        allow_config_change: bool = False,
        trust_checkpoint: bool = False,
    ) -> None:
        self.cfg = cfg
        self.overwrite = overwrite
        self.allow_config_change = allow_config_change
        self.trust_checkpoint = trust_checkpoint
        t = cfg.train
        self.output_dir = Path(cfg.output_dir)
        self.is_main = dist.is_main_process()
        self.device = self._pick_device(t.device)
        self.amp_dtype = (
            {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp) if self.device.type == "cuda" else None
        )

        if iters_per_epoch is None:
            iters_per_epoch = len(train_loader)
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        if t.max_iters > 0:
            self.max_iters, steps = t.max_iters, [int(s) for s in t.steps]
        else:
            self.max_iters = math.ceil(t.epochs * self.iters_per_epoch)
            steps = [round(s * self.iters_per_epoch) for s in t.steps]

        model = model.to(self.device)
        if cfg.model.sync_bn and dist.get_world_size() > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.ema = ModelEMA(model, t.ema_decay, t.ema_tau) if t.ema else None
        self.optimizer = build_optimizer(
            model,
            name=t.optimizer,
            lr=t.lr,
            weight_decay=t.weight_decay,
            momentum=t.momentum,
            nesterov=t.nesterov,
            betas=t.betas,
            decay_norm_and_bias=t.decay_norm_and_bias,
        )
        if dist.get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = model
        self.criterion = criterion.to(self.device)
        self.scheduler = WarmupScheduler(
            self.optimizer,
            max_iters=self.max_iters,
            schedule=t.lr_schedule,
            steps=steps,
            gamma=t.gamma,
            min_lr_ratio=t.min_lr_ratio,
            warmup_iters=t.warmup_iters,
            warmup_factor=t.warmup_factor,
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.data = DataStream(train_loader)
        self.val_loader, self.val_dataset = val_loader, val_dataset
        self.class_names = class_names
        self.checkpoints = CheckpointManager(self.output_dir, keep_last=t.keep_last)
        self.iteration = 0
        self.best_metric: float | None = None
        self.skipped_nonfinite = 0
        self.last_eval: Any = None
        self.writer: Any = None
        self.visualizer: Any = None
        self._last_saved: Path | None = None
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._window = (0, time.perf_counter())  # (iteration, time) at the last log
        self._bar: tqdm | None = None
        self._stop_signal: int | None = None
        self._config_history: list[str] = []

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _pick_device(name: str) -> torch.device:
        if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device=cuda but no CUDA device is available; use train.device=auto or cpu"
            )
        return torch.device("cuda", dist.get_local_rank())

    def _holds_a_run(self) -> bool:
        return self.checkpoints.has_checkpoints() or (self.output_dir / "metrics.jsonl").is_file()

    def _prepare_run_folder(self, resuming: bool) -> None:
        """Refuse (or, with ``overwrite``, clear) a folder that holds another run; remove the
        temporary files an interrupted write left behind. Every rank checks, rank 0 clears."""
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise CheckpointError(f"output_dir {self.output_dir} is a file, not a folder")
        if not resuming and self._holds_a_run():
            if not self.overwrite:
                raise ConfigError(
                    f"output_dir {self.output_dir} already holds a run; continue it with --resume, "
                    "or pass --overwrite to delete its checkpoints and metrics and start again"
                )
            if self.is_main:
                self.checkpoints.clear()
                (self.output_dir / "metrics.jsonl").unlink(missing_ok=True)
                for events in self.output_dir.glob("events.out.tfevents.*"):
                    events.unlink()
            dist.barrier()
        if self.is_main and self.output_dir.is_dir():
            self.checkpoints.remove_stale_tmp()

    def _open_outputs(self) -> None:
        if not self.is_main:
            return
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.output_dir, exc, "run folder") from None
        self._write_config()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.output_dir))
        if self.cfg.vis.period > 0:
            try:
                from detmine.viz.tensorboard import MiningVisualizer
            except ImportError:
                tqdm.write("note: detmine.viz is not available; vis.period is ignored")
            else:
                self.visualizer = MiningVisualizer(
                    self.writer,
                    self.cfg.vis.period,
                    num_images=self.cfg.vis.num_images,
                    top_k=self.cfg.vis.top_k,
                    class_names=self.class_names,
                    cls_activation=unwrap(self.model).cls_activation,
                )

    def _write_config(self) -> None:
        """``config.yaml``: what runs now, with the accepted changes of earlier resumes as
        header comments (the file stays loadable with ``load_config``)."""
        header = [line for line in self._config_history if line]
        save_config(self.cfg, self.output_dir / "config.yaml", header=header)

    def _previous_history(self) -> list[str]:
        path = self.output_dir / "config.yaml"
        if not path.is_file():
            return []
        lines = []
        for line in path.read_text().splitlines():
            if not line.startswith("# "):
                break
            lines.append(line[2:])
        return lines

    def resume_or_load(self) -> bool:
        """With ``train.resume``, continue from the newest checkpoint in ``output_dir``.

        The checkpoint's config is compared with this run's (:mod:`detmine.engine.resume`):
        free keys may differ, a new length re-stretches the schedule (warning), any other
        difference is refused unless ``allow_config_change``.
        """
        resuming = self.cfg.train.resume
        state = (
            self.checkpoints.load_latest(map_location="cpu", trusted=self.trust_checkpoint)
            if resuming
            else None
        )
        self._prepare_run_folder(resuming)
        if resuming and state is None and self.is_main:
            tqdm.write(f"note: no checkpoint in {self.output_dir} to resume from; starting from scratch")
        changes = ConfigChanges()
        if state is not None:
            changes = check_resume_config(
                state.get("config"),
                config_to_dict(self.cfg),
                allow_change=self.allow_config_change,
                source=str(self.checkpoints.latest()),
            )
            self._config_history = self._previous_history()
            if changes.recorded:
                self._config_history.append(
                    f"resumed at iteration {int(state['iteration'])} with changes: "
                    f"{'; '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changes.recorded.items())}"
                )
        self._open_outputs()
        if state is None:
            if resuming:
                self._truncate_metrics(0)
            return False
        self.load_state(state, fresh_optimizer="train.optimizer" in changes.other)
        self._truncate_metrics(self.iteration)
        if self.is_main:
            tqdm.write(f"resumed from {self.checkpoints.latest()} at iteration {self.iteration}")
            if changes.length:
                tqdm.write(
                    f"warning: training length changed ({changes.describe('length')}); the learning-rate "
                    f"schedule is re-stretched over {self.max_iters} iterations"
                )
            if changes.other:
                tqdm.write(f"warning: resuming with a changed config: {changes.describe()}")
        return True

    def _truncate_metrics(self, iteration: int) -> None:
        """Drop the metrics records a killed run wrote after ``iteration`` (its checkpoint)."""
        path = self.output_dir / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                if int(json.loads(line).get("iteration", 0)) <= iteration:
                    kept.append(line)
            except (ValueError, AttributeError):
                continue  # a line cut short by the kill
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(line + "\n" for line in kept), what="metrics file")

    def load_state(self, state: dict[str, Any], fresh_optimizer: bool = False) -> None:
        """Restore a checkpoint written by :meth:`state_dict`.

        The optimizer's hyper-parameters and the schedule's base learning rates come from this
        run's config (equal to the checkpoint's unless a change was allowed); with
        ``fresh_optimizer`` (another optimizer type) its state is not loaded at all.
        """
        missing = [k for k in ("model", "optimizer", "scheduler", "iteration", "sampler") if k not in state]
        if missing:
            raise CheckpointError(
                f"checkpoint lacks {', '.join(missing)}; it is not a detmine training checkpoint"
            )
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        load_model_state(unwrap(self.model), state["model"], source=str(self.checkpoints.latest()))
        try:
            if not fresh_optimizer:
                self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            if state.get("criterion") is not None:
                self.criterion.load_state_dict(state["criterion"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint does not fit this model/optimizer: {str(exc).splitlines()[0]}"
            ) from None
        for group, values in zip(self.optimizer.param_groups, configured, strict=True):
            group.update({k: v for k, v in values.items() if k != "lr"})
        base_lrs = [values["initial_lr"] for values in configured]
        self.scheduler.load_state_dict({**state["scheduler"], "base_lrs": base_lrs})
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_metric = state.get("best_metric")
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        self.data.load_state_dict(state["sampler"])
        self.data.fast_forward()  # before the RNG restore: draining batches draws random numbers
        rngs = state.get("rng") or []
        if rngs:
            set_rng_state(rngs[dist.get_rank()] if len(rngs) == dist.get_world_size() else rngs[0])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (collective: gathers every rank's RNG state)."""
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "criterion": self.criterion.state_dict() if hasattr(self.criterion, "state_dict") else None,
            "iteration": self.iteration,
            "epoch": self.data.epoch,
            "sampler": self.data.state_dict(),
            "rng": dist.all_gather_object(rng_state()),
            "config": config_to_dict(self.cfg),
            "best_metric": self.best_metric,
            "skipped_nonfinite": self.skipped_nonfinite,
            "class_names": list(self.class_names) if self.class_names else None,
        }

    # ------------------------------------------------------------------ loop

    def train(self) -> Any:
        """Run to ``max_iters``; returns the final :class:`EvalResult` (rank 0) or None.

        Raises:
            TrainingInterrupted: after SIGINT / SIGTERM, once the checkpoint of the current
                iteration is written.
        """
        self.resume_or_load()
        self.model.train()
        if self.is_main:
            self._bar = tqdm(total=self.max_iters, initial=self.iteration, desc="train", dynamic_ncols=True)
        self._window = (self.iteration, time.perf_counter())
        try:
            with self._stop_on_signals():
                while self.iteration < self.max_iters:
                    images, targets = next(self.data)
                    self.run_step(images, targets)
                    self.iteration += 1
                    self._after_step()
                    if self._stop_requested():
                        self._stop()
            if self._last_saved is None or self._last_saved != self.checkpoints.path_for(self.iteration):
                self.save()
            period = self.cfg.eval.period
            if self.val_loader is not None and (period <= 0 or self.iteration % period != 0):
                self.evaluate()
            self._report_skipped_images()
        finally:
            if self._bar is not None:
                self._bar.close()
            if self.writer is not None:
                self.writer.flush()
                self.writer.close()
        return self.last_eval

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT / SIGTERM ask the loop to stop after the current step (a second one stops at
        once). Only the main thread can install handlers; elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_requested(self) -> bool:
        """True on every process when any of them received a stop signal (all-reduced)."""
        return not dist.all_true(self._stop_signal is None, self.device)

    def _stop(self) -> None:
        path = self.save()
        signum = self._stop_signal if self._stop_signal is not None else signal.SIGTERM
        name = signal.Signals(signum).name
        where = path if path is not None else self.checkpoints.path_for(self.iteration)
        raise TrainingInterrupted(
            f"{name} received: stopped at iteration {self.iteration}, checkpoint {where}; "
            "continue with --resume",
            exit_code=128 + int(signum),
        )

    def _report_skipped_images(self) -> None:
        summary = getattr(self.data.loader, "skipped_summary", None)
        text = summary() if callable(summary) else None
        if text and self.is_main:
            tqdm.write(f"warning: {text}")

    def run_step(self, images: torch.Tensor, targets: list[Target]) -> None:
        """One optimisation step (or a counted skip of a non-finite batch)."""
        images = images.to(self.device, non_blocking=True)
        targets = targets_to(targets, self.device)
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.model(images)
        outputs = HeadOutputs(out.cls_logits.float(), out.box_deltas.float(), out.anchors.float())
        try:
            losses, record = self.criterion(outputs, outputs.anchors, targets)
        except NonFiniteError as exc:  # raised on every process together (see Criterion)
            self._on_nonfinite(str(exc))
            self.scheduler.step()
            return
        total = sum(losses.values())
        if not dist.all_true(bool(torch.isfinite(total)), self.device):
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            self._on_nonfinite(f"loss is not finite ({values})")
            self.scheduler.step()
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.train.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model))
        for k, v in losses.items():
            self._loss_sums[k] = self._loss_sums.get(k, 0.0) + v.detach()
        if self.visualizer is not None:
            self.visualizer.maybe_log(self.iteration, images, targets, outputs, record)

    def _on_nonfinite(self, what: str) -> None:
        """Skip the batch (``train.on_nonfinite=skip``) or stop naming the iteration and the
        last good checkpoint. ``what`` says which tensor was not finite."""
        if self.cfg.train.on_nonfinite == "skip":
            self.skipped_nonfinite += 1
            if self.is_main:
                tqdm.write(
                    f"warning: {what} at iteration {self.iteration}; batch skipped "
                    f"({self.skipped_nonfinite} so far)"
                )
            return
        last = self.checkpoints.latest()
        where = f"last good checkpoint: {last}" if last is not None else "no checkpoint was saved yet"
        raise NonFiniteError(
            f"{what} at iteration {self.iteration}; {where} "
            "(lower train.lr or lengthen train.warmup_iters, or set train.on_nonfinite=skip)"
        )

    def _after_step(self) -> None:
        it, t, c = self.iteration, self.cfg.train, self.cfg.eval
        if self._bar is not None:
            self._bar.update(1)
        if t.log_period > 0 and (it % t.log_period == 0 or it == self.max_iters):
            self.log_train()
        if self.val_loader is not None and c.period > 0 and it % c.period == 0:
            self.evaluate()  # before the checkpoint, so the saved best_metric is current
        if t.checkpoint_period > 0 and it % t.checkpoint_period == 0:
            self.save()

    # ------------------------------------------------------------------ outputs

    def save(self) -> Path | None:
        """Checkpoint the current iteration (rank 0 writes; every rank must call it)."""
        state = self.state_dict()
        path = None
        if self.is_main:
            path = self.checkpoints.save(state, self.iteration)
        self._last_saved = self.checkpoints.path_for(self.iteration)
        return path

    def log_train(self) -> None:
        """Average the losses since the last log over iterations and ranks; write them out."""
        start_it, start_t = self._window
        n = max(1, self.iteration - start_it)
        now = time.perf_counter()
        means = dist.reduce_dict(
            {k: v / n for k, v in self._loss_sums.items() if isinstance(v, torch.Tensor)}
        )
        self._loss_sums = {}
        self._window = (self.iteration, now)
        if not self.is_main:
            return
        sec_per_iter = (now - start_t) / n
        record = {
            "type": "train",
            "iteration": self.iteration,
            "loss": float(sum(means.values())) if means else float("nan"),
            **{f"loss_{k}": float(v) for k, v in means.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": self.cfg.train.batch_size / sec_per_iter if sec_per_iter > 0 else 0.0,
            "sec_per_iter": sec_per_iter,
            "eta_s": sec_per_iter * (self.max_iters - self.iteration),
            "skipped_nonfinite": self.skipped_nonfinite,
        }
        self._write_metrics(record)
        for key in ("loss", "lr", "images_per_s", *(k for k in record if k.startswith("loss_"))):
            self.writer.add_scalar(f"train/{key}", record[key], self.iteration)
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{record['images_per_s']:.1f}"
            )

    def _write_metrics(self, record: dict[str, Any]) -> None:
        path = self.output_dir / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise write_error(path, exc, "metrics file") from None

    def evaluate(self) -> Any:
        """COCO evaluation of the EMA weights (or the model) on the validation loader."""
        from detmine.engine.evaluator import evaluate

        net = self.ema.module if self.ema is not None else unwrap(self.model)
        gather = dist.all_gather_object if dist.get_world_size() > 1 else None
        with preserved_rng():
            result = evaluate(
                net,
                self.val_loader,
                self.val_dataset,
                predict_options=self.cfg.eval.postprocess.options(),
                backend=self.cfg.eval.backend,
                device=self.device,
                gather_fn=gather,
                progress=self.is_main,
            )
        self.model.train()
        ap = dist.broadcast_object(float(result.stats["AP"]) if result is not None else None)
        if self.best_metric is None or (ap is not None and ap > self.best_metric):
            self.best_metric = ap
            state = self.state_dict()
            if self.is_main:
                save_checkpoint(self.output_dir / "best.pth", state)
        if self.is_main and result is not None:
            self.last_eval = result
            per_class = {f"AP/{name}": float(ap) for name, ap in result.per_class_ap.items()}
            self._write_metrics({"type": "eval", "iteration": self.iteration, **result.stats, **per_class})
            for key, value in result.stats.items():
                self.writer.add_scalar(f"eval/{key}", value, self.iteration)
            try:
                from detmine.viz.tensorboard import log_evaluation
            except ImportError:
                pass
            else:
                log_evaluation(self.writer, result, self.iteration)
        return result
