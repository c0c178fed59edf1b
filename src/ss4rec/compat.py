"""Make RecBole 1.2.1 work on today's numpy, pandas and torch, without touching site-packages.

What breaks, and what this module does about it:

* numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` and ``np.bool8``.
  RecBole's ``Config()`` runs ``np.float = np.float_`` and ray (imported by
  ``recbole.quick_start``) touches ``np.bool8``.  :func:`apply_numpy_aliases` puts the
  old names back, pointing at the types numpy 1 aliased them to.
* pandas 3 (copy-on-write) makes RecBole's ``fillna(inplace=True)`` a silent no-op, so
  NaNs stay in loaded data.  That cannot be aliased away: :func:`check_pandas` raises
  with the fix (the package pins ``pandas<3``).
* torch >= 2.6 loads checkpoints with ``weights_only=True``; RecBole pickles its Config
  into checkpoints.  Our Trainer (``ss4rec.trainer``) saves plain dicts instead.
* RecBole's ``sine.py`` turns autograd anomaly detection on globally when imported;
  :func:`register_with_recbole` turns it back off.
* RecBole's ``get_model`` / ``create_dataset`` / ``get_trainer`` only look inside the
  ``recbole`` package.  :func:`register_with_recbole` makes our classes findable there
  (in memory only), so ``recbole.quick_start.run_recbole(model="SS4Rec")`` works.

Everything here is idempotent and runs on ``import ss4rec`` (the RecBole registration as soon
as RecBole itself is imported).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types

import numpy as np

# name removed in numpy 2 -> the type numpy 1 aliased it to
_NUMPY_REMOVED_ALIASES = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "bool8": np.bool_,
    "int_": np.int64,  # still present in numpy 2; listed so a missing one is restored too
    "object_": np.object_,
    "string_": np.bytes_,
}


def apply_numpy_aliases() -> list[str]:
    """Restore numpy-1 aliases that RecBole 1.2.1 and ray 2.6 use. Returns the names added."""
    added = []
    for name, target in _NUMPY_REMOVED_ALIASES.items():
        try:
            getattr(np, name)
        except AttributeError:
            setattr(np, name, target)
            added.append(name)
    return added


def check_pandas() -> None:
    """Fail loudly on pandas 3, which silently corrupts RecBole's data loading."""
    import pandas as pd

    major = int(pd.__version__.split(".")[0])
    if major >= 3:
        raise ImportError(
            f"pandas {pd.__version__} is installed, but RecBole 1.2.1 silently keeps NaNs "
            "under pandas 3 (copy-on-write turns fillna(inplace=True) into a no-op). "
            "Fix: pip install 'pandas<3'"
        )


def register_with_recbole() -> None:
    """Make ss4rec's model, dataset and trainer classes visible to RecBole's lookups.

    * ``recbole.utils.get_model(name)`` imports ``recbole.model.<kind>.<name.lower()>``;
      we add an in-memory alias module ``recbole.model.sequential_recommender.ss4rec``.
    * ``recbole.data.create_dataset`` uses ``recbole.data.dataset.<Model>Dataset`` if present.
    * ``recbole.utils.get_trainer`` uses ``recbole.trainer.<Model>Trainer`` if present.
    """
    import importlib

    from ss4rec import model as ss4rec_model
    from ss4rec.data.dataset import SS4RecDataset
    from ss4rec.trainer import SS4RecTrainer

    seq_pkg = importlib.import_module("recbole.model.sequential_recommender")
    # RecBole's sine.py (imported with every sequential model) switches autograd anomaly
    # detection on for the whole process at import time, making every backward pass ~1.7x
    # slower. It is a debugging aid: off unless asked for (--debug turns it on).
    import torch

    torch.autograd.set_detect_anomaly(False)
    alias_name = "recbole.model.sequential_recommender.ss4rec"
    if alias_name not in sys.modules:
        alias = types.ModuleType(alias_name)
        alias.__dict__.update(
            {k: v for k, v in vars(ss4rec_model).items() if not k.startswith("__")}
        )
        alias.__spec__ = importlib.machinery.ModuleSpec(alias_name, loader=None)
        sys.modules[alias_name] = alias
        setattr(seq_pkg, "ss4rec", alias)

    dataset_module = importlib.import_module("recbole.data.dataset")
    setattr(dataset_module, "SS4RecDataset", SS4RecDataset)
    trainer_module = importlib.import_module("recbole.trainer")
    setattr(trainer_module, "SS4RecTrainer", SS4RecTrainer)


class _RegisterAfterRecBole(importlib.abc.MetaPathFinder):
    """Runs :func:`register_with_recbole` right after the ``recbole`` package is imported.

    ``import ss4rec`` stays light (no torch, no RecBole: ``ss4rec --help`` answers at once),
    and RecBole still finds SS4Rec whenever anyone imports it afterwards.
    """

    def find_spec(self, name, path, target=None):
        if name != "recbole":
            return None
        sys.meta_path.remove(self)  # find the real spec once, then step aside
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            register_with_recbole()

        spec.loader.exec_module = exec_module
        return spec


def register_when_recbole_loads() -> None:
    """Register with RecBole now if it is loaded, else as soon as it is imported."""
    if "recbole" in sys.modules:
        register_with_recbole()
    elif not any(isinstance(f, _RegisterAfterRecBole) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterRecBole())


def apply() -> None:
    """The numpy aliases and the pandas check; called on ``import ss4rec``."""
    apply_numpy_aliases()
    check_pandas()
