"""One exact ordering of every user's interactions, the same for every model of a comparison.

RecBole sorts interactions by (user, time) with stable sorts, on the time field *as it
stores it*: float32, min-max normalised under ``normalize_all``. float32 merges timestamps a
few seconds apart into one value, and a stable sort then keeps those in file order, while
models on exact float64 time (SS4Rec, TiSASRec) order them by their real times. On
ML-100K that gave 4 test targets, 5 valid targets and ~38 histories that differed between
SS4Rec and SASRec, so a paired per-user comparison compared slightly different tasks.

:class:`ExactTimeOrder` sorts the interactions once by their exact (float64) time, stably,
before RecBole turns them into float32 tensors. Rounding to float32 and min-max scaling are monotone,
so every later stable sort keeps this order: every dataset class (ours and RecBole's)
then yields the same split and the same histories. Interactions with identical timestamps
keep their file order, in every model.
"""

from __future__ import annotations


class ExactTimeOrder:
    """Dataset mixin: the interaction table sorted stably by exact time once it is processed.

    The sort comes after RecBole's processing (filters, id remapping, normalisation), while
    the table is still a float64 DataFrame: ids keep RecBole's numbering (first appearance in
    the file), so a checkpoint's vocabulary matches; min-max scaling is strictly monotone in
    float64, so sorting the scaled times is sorting the exact ones, ties included.
    """

    def _data_processing(self):
        super()._data_processing()
        time_field = self.time_field
        # Benchmark files keep their own order: their rows are cut into splits by file size.
        if self.benchmark_filename_list is not None or time_field is None or time_field not in self.inter_feat:
            return
        self.inter_feat.sort_values(by=time_field, kind="stable", inplace=True, ignore_index=True)


_ORDERED: dict[type, type] = {}


def exactly_ordered(dataset_class: type) -> type:
    """``dataset_class`` with :class:`ExactTimeOrder` (same name, so RecBole's logs read alike)."""
    if issubclass(dataset_class, ExactTimeOrder):
        return dataset_class
    if dataset_class not in _ORDERED:
        _ORDERED[dataset_class] = type(dataset_class.__name__, (ExactTimeOrder, dataset_class),
                                       {"__module__": __name__, "__doc__": dataset_class.__doc__})
    return _ORDERED[dataset_class]
