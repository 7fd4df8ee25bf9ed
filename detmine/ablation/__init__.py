"""Ablations: a grid of strategies x seeds over one recipe, run as ordinary run folders, and a
table that says which differences are real (``tools/ablate.py``).

- :mod:`~detmine.ablation.spec`: the ablation file (strategies as override sets, seeds, the
  baseline), every cell's config checked before anything runs;
- :mod:`~detmine.ablation.cells`: what each cell's run folder holds (new, interrupted,
  finished, or a config that no longer matches) and the command that runs it;
- :mod:`~detmine.ablation.launch`: running the remaining cells here (one after another or
  several at once) or on SLURM through submitit;
- :mod:`~detmine.ablation.results`: the numbers of a finished cell, read from its folder;
- :mod:`~detmine.ablation.report`: ``table.md`` / ``table.csv``, the plot, TensorBoard HParams.

Floor 7 of docs/architecture.md (above training: it reads run folders and evaluation).
"""
