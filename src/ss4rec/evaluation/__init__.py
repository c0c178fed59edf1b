"""Evaluation: judging trained runs and comparing models.

- :mod:`~ss4rec.evaluation.evaluate`: a checkpoint's test metrics and per-user target ranks;
- :mod:`~ss4rec.evaluation.probe`: time diagnostics (quality by gap, request-time shifts);
- :mod:`~ss4rec.evaluation.compare`, :mod:`~ss4rec.evaluation.study`,
  :mod:`~ss4rec.evaluation.compare_plots`: models x seeds, mean ± std, paired bootstrap CIs, plots;
- :mod:`~ss4rec.evaluation.published`: the paper's published numbers (``published.yaml``), shown
  beside a comparison's own with the ratio;
- :mod:`~ss4rec.evaluation.tune`, :mod:`~ss4rec.evaluation.tune_study`: equal-budget
  hyperparameter search (Optuna), resumable, several workers on one study (its storage,
  budget and liveness); tuned models side by side (``compare --tuned``);
- :mod:`~ss4rec.evaluation.report`: a table and a plot of finished runs;
- :mod:`~ss4rec.evaluation.recommend`: top-K items per user with original ids and titles.

Layer rule: may import the pipeline (to run or restore a run) and every layer below it;
never drift or commands.
"""
