"""ss4rec: SS4Rec (arXiv:2502.08132) trained and evaluated through RecBole, on CPU or GPU.

    >>> import ss4rec
    >>> result = ss4rec.run(model="SS4Rec", dataset="ml-100k",
    ...                     config_dict={"epochs": 1, "hidden_size": 32})  # doctest: +SKIP
    >>> result["test"]["ndcg@10"]  # doctest: +SKIP

Importing the package makes RecBole 1.2.1 work on numpy 2 (see ``ss4rec.compat``) and
registers ``SS4Rec`` with RecBole as soon as RecBole is imported, so
``recbole.quick_start.run_recbole(model="SS4Rec")`` works as well. torch and RecBole load
on first use.
"""

from ss4rec import compat as _compat

_compat.apply()
_compat.register_with_recbole()

__version__ = "0.1.0"
__all__ = ["SS4Rec", "run", "__version__"]


def __getattr__(name):
    # torch and RecBole load on first use, so `import ss4rec` (and `ss4rec --help`) is fast.
    if name == "SS4Rec":
        from ss4rec.models.ss4rec import SS4Rec

        return SS4Rec
    if name == "run":
        from ss4rec.pipeline.runner import run

        return run
    raise AttributeError(f"module 'ss4rec' has no attribute {name!r}")
