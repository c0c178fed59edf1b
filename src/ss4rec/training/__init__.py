"""Training: RecBole's trainer extended, and everything a run writes while it trains.

- :mod:`~ss4rec.training.trainer`: the epoch loop (guards, LR schedule, exact resume, W&B);
- :mod:`~ss4rec.training.guards`: non-finite loss/grad, LR and plateau checks;
- :mod:`~ss4rec.training.checkpoint`: plain-dict checkpoints, checksums, data fingerprints;
- :mod:`~ss4rec.training.precision`: ``precision: auto | fp32 | bf16 | fp16`` (autocast, a loss
  scaler for complex gradients);
- :mod:`~ss4rec.training.devices`: the device's facts and peak memory for the results files;
- :mod:`~ss4rec.training.runfolder`: one writer per run folder, atomic writes;
- :mod:`~ss4rec.training.distributed`: DDP on CPU (gloo) and GPU (NCCL), ``--nproc``/torchrun;
- :mod:`~ss4rec.training.host_memory`: on the CPU, freed memory kept for the next step (glibc);
- :mod:`~ss4rec.training.threads`, :mod:`~ss4rec.training.progress`,
  :mod:`~ss4rec.training.curves`, :mod:`~ss4rec.training.wandb_logging`,
  :mod:`~ss4rec.training.notify`: CPU threads, progress lines, ``curves.png``, W&B, webhooks.

Layer rule: may import models, data, ssm, config and errors; never pipeline, evaluation,
drift or commands (a trainer does not know how its run was assembled or will be judged).
"""
