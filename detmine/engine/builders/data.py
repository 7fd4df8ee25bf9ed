"""Data from the config: the synthetic set on first use, the datasets with their transforms
(evaluation in the training geometry), VOC class names shared by every split, and the loaders
(padded as the model declares)."""

from __future__ import annotations

from typing import Any

from torch import nn

from detmine import distributed as dist
from detmine.config import Config
from detmine.console import warn
from detmine.errors import ConfigError


def prepare_data(cfg: Config) -> None:
    """Generate the synthetic dataset on first use (idempotent; a no-op for COCO/VOC)."""
    if cfg.data.kind == "synthetic":
        from detmine.data.synthetic import ensure_synthetic

        ensure_synthetic(cfg.data.root, progress=dist.is_main_process(), **cfg.data.synthetic)


def eval_transform_options(cfg: Config) -> dict[str, Any]:
    """Keyword options of the ``eval`` preset: the geometry the recipe trains with.

    A fixed ``image_size`` square after the ``ssd`` (and ``eval``) training presets; after
    ``retinanet`` the shorter side resized to ``image_size`` with the aspect ratio kept and the
    longer side capped at the training ``max_size`` (or a square when the training transform
    has ``square: true``). ``data.eval_transform_options`` overrides any of these. The eval
    preset never flips or crops.
    """
    from detmine.data.transforms import resizes_to_square

    d = cfg.data
    train_opts = dict(d.transform_options)
    options: dict[str, Any] = {"square": resizes_to_square(d.train_transform, train_opts.get("square"))}
    if not options["square"] and "max_size" in train_opts:
        options["max_size"] = train_opts["max_size"]
    if "min_box_size" in train_opts:
        options["min_box_size"] = train_opts["min_box_size"]
    options.update(d.eval_transform_options)  # names checked at load (EVAL_GEOMETRY_KEYS)
    return options


def build_dataset_split(cfg: Config, split: str, train: bool) -> Any:
    """One split of the configured dataset with the training or evaluation transform."""
    from detmine.data import build_dataset
    from detmine.data.transforms import build_transforms

    d = cfg.data
    if train:
        transform = build_transforms(d.train_transform, d.image_size, **d.transform_options)
    else:
        transform = build_transforms("eval", d.image_size, **eval_transform_options(cfg))
    options = dict(d.options) if train else {**d.options, **d.val_options}
    if d.kind == "voc" and options.get("class_names") is None:
        options["class_names"] = voc_class_names(cfg)
    return build_dataset(d.kind, d.root, split, transform=transform, on_bad_image=d.on_bad_image, **options)


def voc_class_names(cfg: Config) -> list[str]:
    """The class names of a VOC-format dataset without ``data.options.class_names``: discovered
    from the TRAINING split's annotations, so every split and tool shares one mapping."""
    from detmine.data.voc import discover_class_names

    d = cfg.data
    years = {"years": d.options["years"]} if "years" in d.options else {}
    return discover_class_names(d.root, split=d.train_split, **years)


def build_datasets(cfg: Config) -> tuple[Any, Any]:
    """``(train_dataset, val_dataset)`` of the configured data. VOC class names discovered from
    the annotations are written into ``cfg.data.options.class_names``, so the run's
    config.yaml keeps the mapping for evaluation and prediction."""
    train_set = build_dataset_split(cfg, cfg.data.train_split, True)
    if dist.is_main_process() and not has_objects(train_set):
        warn(
            f"the training split {cfg.data.train_split!r} of {cfg.data.root} has no annotated object in its "
            f"{len(train_set)} images: nothing to learn but background"
        )
    if cfg.data.kind == "voc" and cfg.data.options.get("class_names") is None:
        cfg.data.options["class_names"] = list(train_set.class_names)
        if dist.is_main_process():
            print(
                f"VOC split {cfg.data.train_split!r}: data.options.class_names not given; using the "
                f"{len(train_set.class_names)} classes of its annotations: {train_set.class_names} "
                "(saved in the run's config.yaml; set data.options.class_names to choose the order)"
            )
    return train_set, build_dataset_split(cfg, cfg.data.val_split, False)


def has_objects(dataset: Any) -> bool:
    """Whether any image of ``dataset`` has an object to learn (ignore regions do not count),
    read from the annotations (``image_labels``) without decoding; True when the dataset does
    not say."""
    labels = getattr(dataset, "image_labels", None)
    if not callable(labels):
        return True
    return any(labels(i) for i in range(len(dataset)))


def per_process_batch(global_batch: int, what: str = "train.batch_size") -> int:
    world = dist.get_world_size()
    if global_batch % world:
        raise ConfigError(
            f"{what}={global_batch} is the global batch and must be divisible by the {world} processes"
        )
    return global_batch // world


def batch_geometry(model: nn.Module | None) -> dict[str, Any]:
    """``size_divisible`` / ``pad_value`` of the loader for ``model``: the input divisibility the
    model declares (1 for fixed-size SSD, so 300 px stays 300 px) and its normalisation mean in
    0..255 pixels (padding becomes zero after normalisation)."""
    if model is None:
        return {}
    out: dict[str, Any] = {}
    if hasattr(model, "size_divisible"):
        out["size_divisible"] = int(model.size_divisible)
    if hasattr(model, "pad_value"):
        out["pad_value"] = tuple(float(v) for v in model.pad_value)
    return out


def with_hard_negatives(cfg: Config, dataset: Any) -> tuple[Any, dict[str, Any]]:
    """The training set with the ``data.hard_negatives`` pool appended
    (:class:`~detmine.data.pool_dataset.WithHardNegatives`, the pool read through the training
    transform of ``dataset``) and the loader's ``{pool_size, pool_ratio}``; ``(dataset, {})``
    without a pool. A bad pool file is one :class:`DataError` line naming it."""
    options = cfg.data.hard_negatives.resolved()
    if options["pool"] is None:
        return dataset, {}
    from detmine.data.hard_negatives import read_pool
    from detmine.data.pool_dataset import PoolDataset, WithHardNegatives
    from detmine.errors import DataError

    pool = read_pool(options["pool"])
    if not pool.entries:
        raise DataError(
            f"hard-negative pool {options['pool']}: it holds no entries, nothing to mix in "
            "(data.hard_negatives.pool; mine with a lower --score-thresh, or set it to null)"
        )
    names = list(getattr(dataset, "class_names", []) or [])
    if pool.class_names and names and pool.class_names != names and dist.is_main_process():
        warn(
            f"hard-negative pool {options['pool']} was mined by a detector of the classes {pool.class_names}, "
            f"the training set has {names}: its images are background-only all the same"
        )
    pool_set = PoolDataset(
        pool,
        transform=getattr(dataset, "transform", None),
        on_bad_image=cfg.data.on_bad_image,
        crop=options["crop"],
        crop_context=options["crop_context"],
        crop_min_size=options["crop_min_size"],
    )
    return WithHardNegatives(dataset, pool_set), {"pool_size": len(pool_set), "pool_ratio": options["ratio"]}


def build_train_loader(cfg: Config, dataset: Any, model: nn.Module | None = None) -> Any:
    """The training loader: shuffled with a sampler seeded by ``train.seed`` (resumable),
    sharded over the processes when distributed; per-process batch = global / world size;
    batches padded as ``model`` declares (:func:`batch_geometry`). With
    ``data.hard_negatives.pool`` the pool's images join the stream at its ``ratio``
    (:func:`with_hard_negatives`), so an epoch is the training set plus its pool share."""
    from detmine.data.loader import build_dataloader

    dataset, pool = with_hard_negatives(cfg, dataset)
    opts = dict(cfg.data.loader_options)  # names and types checked at load
    return build_dataloader(
        dataset,
        per_process_batch(cfg.train.batch_size),
        train=True,
        num_workers=cfg.data.num_workers,
        distributed=dist.get_world_size() > 1,
        seed=cfg.train.seed,
        **{**batch_geometry(model), **opts, **pool},
    )


def build_mining_set(dataset: Any, split: str, images: str | None = None) -> tuple[Any, dict[int, str], str]:
    """What ``tools/mine_hard_negatives.py`` searches, read with ``dataset``'s (evaluation)
    transform: the background-only images of ``dataset``, the split ``split`` (chosen from its
    annotations, no image decoded) or, with ``images``, every image of that folder. Returns ``(images, image
    id -> file, source)`` with ``source`` the split's name or ``"folder"``.

    Raises:
        DataError: no image to search (a split without background-only images, an empty folder).
    """
    from torch.utils.data import Subset

    from detmine.data.negative_mining import ImageFolder, background_indices
    from detmine.errors import DataError

    if images is not None:
        folder = ImageFolder(images, transform=getattr(dataset, "transform", None))
        return folder, dict(enumerate(folder.paths)), "folder"
    indices = background_indices(dataset)
    if not indices:
        raise DataError(
            f"split {split!r} has no background-only image among its {len(dataset)} images: nothing to mine "
            "(choose another --split, or --images FOLDER)"
        )
    records = dataset.records
    return Subset(dataset, indices), {records[i].image_id: records[i].path for i in indices}, split


def build_val_loader(cfg: Config, dataset: Any, model: nn.Module | None = None) -> Any:
    """The evaluation loader (in order, sharded when distributed), optionally the first
    ``eval.max_images`` images only; batches padded as ``model`` declares."""
    from torch.utils.data import Subset

    from detmine.data.loader import build_dataloader

    if cfg.eval.max_images > 0 and cfg.eval.max_images < len(dataset):
        dataset = Subset(dataset, range(cfg.eval.max_images))
    batch = max(1, cfg.eval.batch_size // dist.get_world_size())
    return build_dataloader(
        dataset,
        batch,
        train=False,
        num_workers=cfg.data.num_workers,
        distributed=dist.get_world_size() > 1,
        seed=cfg.train.seed,
        **batch_geometry(model),
    )


# ----------------------------------------------------------------------------- model / criterion
