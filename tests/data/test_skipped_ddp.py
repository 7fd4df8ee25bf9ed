"""Two gloo processes: the skipped-image summary counts the images of EVERY rank (each rank
skips a different number), and every rank gets the same line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

N, BATCH = 16, 4
# evaluation shards are contiguous: rank 0 reads 0..7 (2 unreadable), rank 1 8..15 (3)
EVAL_BAD = {1, 5, 9, 10, 12}
TRAIN_BAD = {0, 3, 6, 7, 11, 14}


class Flaky(torch.utils.data.Dataset):
    """``N`` 1-px images; the indices in ``bad`` are unreadable (the dataset returns None)."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        if i in self.bad:
            return None
        target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                  "ignore_boxes": torch.zeros((0, 4)), "image_id": i, "orig_size": (1, 1), "input_size": (1, 1)}  # fmt: skip
        return torch.full((3, 1, 1), i, dtype=torch.uint8), target


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from detmine.data.loader import build_dataloader

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {}
        for name, bad, train in (("eval", EVAL_BAD, False), ("train", TRAIN_BAD, True)):
            loader = build_dataloader(Flaky(bad), BATCH, train=train, num_workers=0, seed=3)
            list(loader)
            result[name] = loader.skipped_summary()
            result[f"{name}_local"] = loader.skipped_summary(all_ranks=False)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_skipped_summary_sums_every_rank(tmp_path):
    from detmine.data.samplers import TrainingBatchSampler

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    first = "first: <index 1> (the dataset returned None)"
    assert ranks[0]["eval"] == ranks[1]["eval"] == f"5 of 16 images skipped: 5 other; {first}"
    assert ranks[0]["eval_local"] == f"2 of 8 images skipped: 2 other; {first}"
    assert ranks[1]["eval_local"].startswith("3 of 8 images skipped: 3 other; first: <index 9>")

    # training: the reference is each rank's shard as the sampler hands it out
    shards = [
        [i for b in TrainingBatchSampler(N, BATCH, seed=3, rank=r, world_size=2).epoch_batches(0) for i in b]
        for r in (0, 1)
    ]
    skipped = [sum(int(i) in TRAIN_BAD for i in shard) for shard in shards]
    assert skipped[0] != skipped[1] and all(skipped)  # the ranks skip different numbers
    total = f"{sum(skipped)} of {sum(map(len, shards))} images skipped: {sum(skipped)} other; first: "
    assert ranks[0]["train"] == ranks[1]["train"] and ranks[0]["train"].startswith(total)
    assert ranks[0]["train_local"].startswith(f"{skipped[0]} of {len(shards[0])} images skipped")
