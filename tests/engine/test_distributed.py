"""Two-process DDP (gloo, CPU) equals one process with the same global batch.

The model has no BatchNorm and no dropout and the fake criterion averages over the images
of the local batch, so averaging the gradients of two half batches is exactly the gradient
of the whole batch. The two workers run this file as a script under torchrun-style
environment variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

OVERRIDES = [
    "train.max_iters=4",
    "train.checkpoint_period=2",
    "eval.period=0",
    "eval.val_loss=false",
    "train.optimizer=sgd",
]


def build(fakes, cfg, world: int, rank: int):
    """The real builders over the fake parts (the detmine loader shards the batches)."""
    from detmine.engine import builders
    from detmine.engine.run_state import seed_everything

    seed_everything(0)
    model = fakes.FakeDetector(dropout=0.0, batchnorm=False)
    train_ds = fakes.FakeDetectionDataset(16, noise=False)
    val_ds = fakes.FakeDetectionDataset(5, noise=False)
    return builders.build_trainer(cfg, model, fakes.FakeCriterion(per_image=True), train_ds, val_ds)


def worker(out_dir: str) -> None:
    import conftest as fakes

    from detmine import distributed as dist

    assert dist.init_distributed() and dist.get_world_size() == 2
    rank = dist.get_rank()
    cfg = fakes.tiny_config(Path(out_dir), *OVERRIDES)
    trainer = build(fakes, cfg, world=2, rank=rank)
    result = trainer.train()
    losses = dist.reduce_dict({"x": torch.tensor(float(rank))})
    gathered = dist.all_gather_object(rank * 10)
    state = {k: v.clone() for k, v in trainer.model.module.state_dict().items()}
    torch.save(
        {
            "state": state,
            "ap": None if result is None else result.stats["AP"],
            "mean": float(losses["x"]),
            "gathered": gathered,
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    dist.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_one_process(fakes, tmp_path):
    env = dict(
        os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(tmp_path / "ddp")],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)

    single = build(fakes, fakes.tiny_config(tmp_path / "single", *OVERRIDES), world=1, rank=0)
    single_result = single.train()
    r0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    r1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, atol=1e-5, rtol=1e-5, msg=k)
        torch.testing.assert_close(r1["state"][k], r0["state"][k], atol=0, rtol=0)
    assert r0["mean"] == 0.5 and r0["gathered"] == [0, 10]
    # evaluation gathered across ranks = evaluation in one process; only rank 0 gets it
    assert r1["ap"] is None and r0["ap"] == single_result.stats["AP"]
    # rank 0 alone writes checkpoints and metrics
    run = tmp_path / "ddp" / "run"
    assert sorted(p.name for p in run.glob("model_*.pth")) == ["model_0000002.pth", "model_0000004.pth"]
    iterations = [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [2, 4, 4]  # two train records + the final evaluation


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    worker(sys.argv[1])
