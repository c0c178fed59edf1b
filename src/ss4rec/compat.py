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
  into checkpoints.  Our Trainer (``ss4rec.training.trainer``) saves plain dicts instead.
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


_ALIAS = "recbole.model.sequential_recommender.ss4rec"


def _lazy_attribute(module, name: str, load) -> None:
    """``module.<name>`` resolves to ``load()`` on first access (PEP 562 module __getattr__)."""
    previous = module.__dict__.get("__getattr__")

    def __getattr__(attr):
        if attr == name:
            value = load()
            setattr(module, name, value)
            return value
        if previous is not None:
            return previous(attr)
        raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}")

    module.__getattr__ = __getattr__


def _dataset_class():
    from ss4rec.data.dataset import SS4RecDataset

    return SS4RecDataset


def _trainer_class():
    from ss4rec.training.trainer import SS4RecTrainer

    return SS4RecTrainer


def _after_sequential_models(module) -> None:
    # RecBole's sine.py (imported with every sequential model) switches autograd anomaly
    # detection on for the whole process at import time, making every backward pass ~1.7x
    # slower. It is a debugging aid: off unless asked for (--debug turns it on).
    import torch

    torch.autograd.set_detect_anomaly(False)


# module -> what to do right after RecBole imports it (our classes load only when asked for)
_AFTER_IMPORT = {
    "recbole.model.sequential_recommender": _after_sequential_models,
    "recbole.data.dataset": lambda module: _lazy_attribute(module, "SS4RecDataset", _dataset_class),
    "recbole.trainer": lambda module: _lazy_attribute(module, "SS4RecTrainer", _trainer_class),
}


class _AliasLoader(importlib.abc.Loader):
    """``recbole.model.sequential_recommender.ss4rec``: an in-memory view of ``ss4rec.models.ss4rec``."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from ss4rec.models import ss4rec as model

        module.__dict__.update({k: v for k, v in vars(model).items() if not k.startswith("__")})


class _RecBoleHooks(importlib.abc.MetaPathFinder):
    """Registers SS4Rec with RecBole as RecBole's modules are imported, never before.

    * ``recbole.utils.get_model("SS4Rec")`` imports ``recbole.model.sequential_recommender.ss4rec``:
      an alias of ``ss4rec.models.ss4rec`` (:class:`_AliasLoader`);
    * ``recbole.data.create_dataset`` and ``recbole.utils.get_trainer`` look up
      ``recbole.data.dataset.SS4RecDataset`` and ``recbole.trainer.SS4RecTrainer``: lazy
      attributes of those modules, so nothing of ours is imported while RecBole loads;
    * after the sequential models load, anomaly detection is switched back off.
    """

    def find_spec(self, name, path, target=None):
        if name == _ALIAS:
            return importlib.util.spec_from_loader(name, _AliasLoader())
        after = _AFTER_IMPORT.get(name)
        if after is None:
            return None
        finders = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for s in (f.find_spec(name, path, target) for f in finders) if s is not None), None)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            after(module)

        spec.loader.exec_module = exec_module
        return spec


def register_with_recbole() -> None:
    """Make SS4Rec, its dataset and trainer visible to RecBole's lookups (in memory only).

    Idempotent. RecBole modules already imported are registered now, the others when they
    are imported; ``import ss4rec`` itself imports neither torch nor RecBole.
    """
    if not any(isinstance(f, _RecBoleHooks) for f in sys.meta_path):
        sys.meta_path.insert(0, _RecBoleHooks())
    for name, after in _AFTER_IMPORT.items():
        if name in sys.modules:
            after(sys.modules[name])


def apply() -> None:
    """The numpy aliases and the pandas check; called on ``import ss4rec``."""
    apply_numpy_aliases()
    check_pandas()
