""":class:`DatasetFacts`: the training set's counts a loss or miner may ask for, each computed
once, on first use (``detmine.structures.TrainingSetFacts``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detmine.analysis.anchor_counts import AnchorCounts
from detmine.analysis.class_counts import ClassCounts, count_classes
from detmine.errors import ConfigError


class DatasetFacts:
    """The counts of a training split, lazily.

    Args:
        dataset: the training split (a detmine dataset with annotation records), or a
            zero-argument function building it on first use (a tool that looks at another
            split builds the training split only when a component asks for its counts).
        anchor_counter: ``(dataset) -> AnchorCounts``
            (:func:`~detmine.analysis.count_anchor_labels` with the run's anchors, matcher and
            geometry); None when the anchors are not known (then :meth:`anchor_label_counts`
            is an error).
    """

    def __init__(self, dataset: Any, anchor_counter: Callable[[Any], AnchorCounts] | None = None) -> None:
        self._dataset = dataset
        self._anchor_counter = anchor_counter
        self._classes: ClassCounts | None = None
        self._anchors: AnchorCounts | None = None

    @property
    def dataset(self) -> Any:
        """The training split (built now when it was given as a function)."""
        if callable(self._dataset) and not hasattr(self._dataset, "records"):
            self._dataset = self._dataset()
        return self._dataset

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.class_names)

    @property
    def classes(self) -> ClassCounts:
        """:class:`ClassCounts` of the split (counted on first use)."""
        if self._classes is None:
            self._classes = count_classes(self.dataset)
        return self._classes

    @property
    def anchors(self) -> AnchorCounts:
        """:class:`AnchorCounts` of the split (matched on first use)."""
        if self._anchors is None:
            if self._anchor_counter is None:
                raise ConfigError(
                    "the anchor counts of the training set were asked for, but the builder was given no "
                    "model anchors to count them with"
                )
            self._anchors = self._anchor_counter(self.dataset)
        return self._anchors

    def instances_per_class(self) -> list[int]:
        return list(self.classes.instances)

    def images_per_class(self) -> list[int]:
        return list(self.classes.images)

    def anchor_label_counts(self) -> list[int]:
        return list(self.anchors.labels)

    def __repr__(self) -> str:
        built = not callable(self._dataset) or hasattr(self._dataset, "records")
        return f"DatasetFacts({type(self._dataset).__name__ if built else 'not built yet'})"
