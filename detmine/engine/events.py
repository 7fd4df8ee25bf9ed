"""The event storage hooks write to, and the writers that drain it (detectron2's
``EventStorage`` / ``EventWriter`` shape).

A hook never knows where its numbers go: it calls ``trainer.events.put_record("eval", {...})``
(a ``metrics.jsonl`` line), ``put_scalar``, ``put_image``, ``put_histogram`` or ``put_table``.
The writer hook (the last hook, :class:`~detmine.engine.hooks.WriterHook`) drains the storage
after every step into each :class:`EventWriter`: :class:`JSONLinesWriter` (``metrics.jsonl``),
:class:`TensorBoardWriter` and :class:`ConsoleWriter` (progress bar / log lines). On processes
other than the main one nothing is written.

The storage also offers ``add_scalar`` / ``add_image`` / ``add_histogram`` / ``add_text`` with
``SummaryWriter``'s signature, so a visualiser written for a TensorBoard writer
(:class:`~detmine.viz.tensorboard.MiningVisualizer`) writes through it unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detmine.console import Progress, format_duration, log
from detmine.errors import CheckpointError
from detmine.safe_io import write_error


@dataclass
class Events:
    """What the storage held since the last drain: ``records`` (``{"type", "iteration", ...}``
    for metrics.jsonl) and TensorBoard items as ``(tag, value, step)`` tuples."""

    records: list[dict[str, Any]] = field(default_factory=list)
    scalars: list[tuple[str, float, int]] = field(default_factory=list)
    images: list[tuple[str, Any, int, str]] = field(default_factory=list)
    histograms: list[tuple[str, Any, int]] = field(default_factory=list)
    texts: list[tuple[str, str, int]] = field(default_factory=list)


class EventStorage:
    """Collects the events of the current iteration (``iteration`` is set by the trainer)."""

    def __init__(self) -> None:
        self.iteration = 0
        self._events = Events()

    def _step(self, step: int | None) -> int:
        return self.iteration if step is None else int(step)

    def put_record(self, kind: str, values: dict[str, Any], *, step: int | None = None) -> None:
        """One ``metrics.jsonl`` record ``{"type": kind, "iteration": step, **values}``."""
        self._events.records.append({"type": kind, "iteration": self._step(step), **values})

    def put_scalar(self, name: str, value: float, *, step: int | None = None) -> None:
        """A TensorBoard scalar ``name`` (``"train/loss"``)."""
        self._events.scalars.append((name, float(value), self._step(step)))

    def put_scalars(self, prefix: str, values: dict[str, float], *, step: int | None = None) -> None:
        """``{prefix}/{key}`` scalars."""
        for key, value in values.items():
            self.put_scalar(f"{prefix}/{key}", value, step=step)

    def put_image(self, name: str, image: Any, *, step: int | None = None, dataformats: str = "HWC") -> None:
        """A picture (uint8 ``[H, W, 3]`` array, or as ``dataformats`` says)."""
        self._events.images.append((name, image, self._step(step), dataformats))

    def put_histogram(self, name: str, values: Any, *, step: int | None = None) -> None:
        """A histogram of a 1-D tensor / array of values."""
        self._events.histograms.append((name, values, self._step(step)))

    def put_text(self, name: str, text: str, *, step: int | None = None) -> None:
        """Markdown text (TensorBoard's text tab)."""
        self._events.texts.append((name, str(text), self._step(step)))

    def put_table(
        self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]], *, step: int | None = None
    ) -> None:
        """A table: a markdown text in TensorBoard and a ``table`` record in metrics.jsonl."""
        lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
        self.put_text(name, "\n".join(lines), step=step)
        self.put_record(
            "table", {"name": name, "header": list(header), "rows": [list(r) for r in rows]}, step=step
        )

    # SummaryWriter-compatible spelling, for visualisers written against a TensorBoard writer
    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        self.put_scalar(tag, value, step=step)

    def add_image(self, tag: str, image: Any, step: int | None = None, dataformats: str = "CHW") -> None:
        self.put_image(tag, image, step=step, dataformats=dataformats)

    def add_histogram(self, tag: str, values: Any, step: int | None = None) -> None:
        self.put_histogram(tag, values, step=step)

    def add_text(self, tag: str, text: str, step: int | None = None) -> None:
        self.put_text(tag, text, step=step)

    def drain(self) -> Events:
        """Everything put since the last drain (and an empty storage)."""
        events, self._events = self._events, Events()
        return events


class EventWriter:
    """Writes drained :class:`Events`: ``start`` before training (the first iteration and the
    length), ``write`` after each step, ``close`` at the end of the run."""

    def start(self, iteration: int, max_iters: int) -> None:
        pass

    def write(self, events: Events, iteration: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONLinesWriter(EventWriter):
    """``metrics.jsonl``: one JSON record a line. An append that fails (a full disk) is cut
    back to the file's previous length, so the file never ends in half a line, and is one line
    naming the file and the cause."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, events: Events, iteration: int) -> None:
        if not events.records:
            return
        text = "".join(json.dumps(record) + "\n" for record in events.records)
        append_all_or_nothing(self.path, text, what="metrics file")


def append_all_or_nothing(path: Path, text: str, *, what: str) -> None:
    """Append ``text`` to ``path`` all or nothing: a write that fails part-way (a full disk) is
    cut back to the file's previous size before the one-line write error (which says so when
    even the cut-back failed)."""
    data = memoryview(text.encode())
    start: int | None = None
    try:
        with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to flush on close
            start = f.seek(0, 2)
            while data:
                data = data[f.write(data) :]
    except OSError as exc:
        if start is not None:
            try:
                os.truncate(path, start)
            except OSError as again:
                raise CheckpointError(
                    f"cannot write {what} {path}: {exc.strerror or exc}; its last line is cut "
                    f"short and could not be removed ({again.strerror or again})"
                ) from None
        raise write_error(path, exc, what) from None


#: JPEG quality of the TensorBoard pictures: at >= 512 px (issue 17) PIL's PNG encoding in
#: ``SummaryWriter.add_image`` took ~0.4 s per picture, JPEG at this quality ~10 ms, with no
#: artefact visible around the 1-2 px box lines and labels (bench/vis_overhead.py).
TENSORBOARD_JPEG_QUALITY = 92


def jpeg_image_summary(tag: str, image: Any, dataformats: str = "CHW") -> Any:
    """A TensorBoard image ``Summary`` holding ``image`` as a JPEG, or None where the fast path
    does not apply (anything but a 3-channel ``uint8`` image in ``HWC`` / ``CHW``: those go
    through ``SummaryWriter.add_image``, which scales floats and handles grey / RGBA).
    TensorBoard's image plugin serves the bytes with the MIME type it detects, JPEG included.

    Args:
        image: ``[H, W, 3]`` (``HWC``) or ``[3, H, W]`` (``CHW``) uint8 RGB, numpy or torch.
    """
    import numpy as np

    if dataformats not in ("HWC", "CHW"):
        return None
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3:
        return None
    if dataformats == "CHW":
        array = array.transpose(1, 2, 0)
    if array.shape[2] != 3:
        return None
    import cv2
    from tensorboard.compat.proto.summary_pb2 import Summary

    bgr = np.ascontiguousarray(array[:, :, ::-1])
    # no chroma subsampling: thin coloured box lines and labels keep their colour
    options = [cv2.IMWRITE_JPEG_QUALITY, TENSORBOARD_JPEG_QUALITY]
    options += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, encoded = cv2.imencode(".jpg", bgr, options)
    if not ok:
        return None
    height, width = array.shape[:2]
    picture = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encoded.tobytes())
    return Summary(value=[Summary.Value(tag=tag, image=picture)])


class TensorBoardWriter(EventWriter):
    """A ``torch.utils.tensorboard.SummaryWriter`` in the run folder, opened by :meth:`start`."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def start(self, iteration: int, max_iters: int) -> None:
        # when training starts, not when the hooks are built: a resume that fails before
        # leaves no new events file behind
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def write(self, events: Events, iteration: int) -> None:
        w = self.writer
        if w is None:
            return
        for tag, value, step in events.scalars:
            w.add_scalar(tag, value, step)
        for tag, values, step in events.histograms:
            w.add_histogram(tag, values.cpu() if hasattr(values, "cpu") else values, step)
        for tag, image, step, dataformats in events.images:
            summary = jpeg_image_summary(tag, image, dataformats)
            if summary is None:
                w.add_image(tag, image, step, dataformats=dataformats)
            else:  # SummaryWriter has no public call for an encoded picture (add_image re-encodes as PNG)
                w._get_file_writer().add_summary(summary, step)
        for tag, text, step in events.texts:
            w.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


class ConsoleWriter(EventWriter):
    """The progress bar on a terminal (its postfix: loss, lr, img/s), and in a log file one
    plain line per ``train`` record (iteration, losses, lr, img/s, ETA)."""

    def __init__(self) -> None:
        self.max_iters = 0
        self.bar: Progress | None = None
        self._shown = 0

    def start(self, iteration: int, max_iters: int) -> None:
        # on a terminal a bar; in a log file no redraws, only the lines of the train records
        self.max_iters, self._shown = max_iters, iteration
        self.bar = Progress(max_iters, "train", initial=iteration, every=0)

    def write(self, events: Events, iteration: int) -> None:
        if self.bar is not None and iteration > self._shown:
            self.bar.update(iteration - self._shown)
            self._shown = iteration
        for record in events.records:
            if record.get("type") == "train":
                self._train_line(record)

    def _train_line(self, r: dict[str, Any]) -> None:
        if self.bar is not None and self.bar.bar is not None:
            self.bar.set_postfix(
                loss=f"{r['loss']:.4f}", lr=f"{r['lr']:.2e}", img_s=f"{r['images_per_s']:.1f}"
            )
            return
        losses = "  ".join(f"{k[5:]} {float(v):.4f}" for k, v in r.items() if k.startswith("loss_"))
        log(
            f"iter {r['iteration']}/{self.max_iters}  loss {r['loss']:.4f} ({losses})  "
            f"lr {r['lr']:.2e}  {r['images_per_s']:.1f} img/s  eta {format_duration(r['eta_s'])}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = [
    "ConsoleWriter",
    "EventStorage",
    "EventWriter",
    "Events",
    "JSONLinesWriter",
    "TensorBoardWriter",
    "append_all_or_nothing",
]
