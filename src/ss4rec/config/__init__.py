"""Settings: the packaged YAML files, their loading, and the checks on every key and value.

- :mod:`ss4rec.config.files`: packaged configs (``--config tiny``) and per-model defaults
  (``properties/``), YAML loading, ``--set key=value`` parsing, unknown-key checks;
- :mod:`ss4rec.config.validation`: the keys ss4rec owns and the type and range of every value;
- :mod:`ss4rec.config.shapes`: nested and textual settings, and the keys that must agree;
- :mod:`ss4rec.config.safe_yaml`: every settings text read as bounded, safe YAML (never code);
- :mod:`ss4rec.config.space`: search spaces for ``ss4rec tune`` (``properties/MODEL.space.yaml``,
  ``--space FILE``), checked key by key with the two modules above.

Layer rule: imports only :mod:`ss4rec.errors` and libraries. Turning checked settings into
RecBole's ``Config`` for a run is :mod:`ss4rec.pipeline.settings`' job.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROPERTIES_DIR = PACKAGE_DIR / "properties"  # per-model defaults (SS4Rec.yaml, ...) and search spaces (SS4Rec.space.yaml, ...), guards.yaml, data.yaml
CONFIGS_DIR = PACKAGE_DIR / "configs"  # packaged configs, named without a path: --config tiny
