"""The pipeline: from a model name, a dataset and settings to a finished run folder.

- :mod:`~ss4rec.pipeline.settings`: settings resolution (model, dataset folder, merged and
  checked settings) into RecBole's ``Config``: ``build_config``;
- :mod:`~ss4rec.pipeline.preflight`: checks of environment, config, data, one real batch and
  the optimiser before any compute is spent;
- :mod:`~ss4rec.pipeline.runner`: ``ss4rec.run`` (train, test, ``results.json``) and ``restore``;
- :mod:`~ss4rec.pipeline.envinfo`: the environment block (versions, GPU, kernels).

Layer rule: may import training, models, data, ssm, config and errors; never evaluation,
drift or commands.
"""
