"""Two gloo processes: a stop signal or non-finite head outputs on ONE process make every
process stop (or skip) at the same iteration, so the collectives stay paired."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CONFTEST = Path(__file__).with_name("conftest.py")


def _fakes():
    spec = importlib.util.spec_from_file_location("ddp_fakes", CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _OnRank1(torch.nn.Module):
    """Wraps the detector: on rank 1 only, at forward ``at``, send SIGTERM to this process
    (``"signal"``) or return NaN logits (``"nan"``)."""

    def __init__(self, inner, at: int, what: str) -> None:
        super().__init__()
        self.inner, self.at, self.what, self.calls = inner, at, what, 0
        self.cls_activation = inner.cls_activation

    def forward(self, images):
        self.calls += 1
        out = self.inner(images)
        if self.calls == self.at and dist.get_rank() == 1:
            if self.what == "signal":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                out.cls_logits = out.cls_logits * float("nan")
        return out

    def predict(self, *args, **kwargs):
        return self.inner.predict(*args, **kwargs)


def _train_one_rank(rank: int, run_dir: str, what: str) -> dict:
    """Build and train on this rank; returns what the test compares. The trainer (and its DDP
    reducer) is released when this returns, before the process group is destroyed."""
    from detmine.box_coder import BoxCoder
    from detmine.criterion import build_criterion
    from detmine.engine import builders
    from detmine.errors import TrainingInterrupted

    fakes = _fakes()
    torch.manual_seed(0)
    cfg = fakes.tiny_config(Path(run_dir), "train.max_iters=6", "train.on_nonfinite=skip")
    criterion = build_criterion("sigmoid", BoxCoder(), mining={"type": "all"})
    model = _OnRank1(fakes.FakeDetector(dropout=0.0, batchnorm=False), at=3, what=what)
    trainer = builders.build_trainer(
        cfg, model, criterion, fakes.FakeDetectionDataset(), fakes.FakeDetectionDataset(6)
    )
    outcome = "finished"
    try:
        trainer.train()
    except TrainingInterrupted:
        outcome = "interrupted"
    weights = {k: v.tolist() for k, v in trainer.model.module.state_dict().items()}
    return {
        "iteration": trainer.iteration,
        "outcome": outcome,
        "skipped": trainer.skipped_nonfinite,
        "weights": weights,
    }


def _worker(rank: int, world: int, init_file: str, run_dir: str, what: str) -> None:
    from detmine import distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = _train_one_rank(rank, run_dir, what)
        (Path(run_dir) / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        distributed.cleanup()


@pytest.mark.parametrize("what", ["signal", "nan"])
def test_one_process_stops_or_skips_all_of_them(tmp_path, what):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), what), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    if what == "signal":
        assert [r["outcome"] for r in ranks] == ["interrupted", "interrupted"]
        assert [r["iteration"] for r in ranks] == [3, 3]
        assert (tmp_path / "run" / "model_0000003.pth").is_file()
    else:
        assert [r["outcome"] for r in ranks] == ["finished", "finished"]
        assert [r["skipped"] for r in ranks] == [1, 1]
        assert [r["iteration"] for r in ranks] == [6, 6]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # still in step
