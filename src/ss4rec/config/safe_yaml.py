"""YAML as data, within bounds: every settings text ss4rec reads goes through :func:`load_yaml`.

``yaml.safe_load`` builds no Python objects, but it does follow aliases: a few hundred bytes
of nested anchors (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``) stand for billions of
values, which every later walk over the settings (validation, RecBole, ``results.json``)
expands. Here a text is refused before it is built when it is larger than
:data:`MAX_YAML_BYTES`, nests deeper than :data:`MAX_DEPTH`, or stands for more than
:data:`MAX_VALUES` values with its aliases expanded (counted on the parsed node graph, so
counting costs what the text costs). Files must be UTF-8; a bad byte is named by line and column.

    >>> load_yaml("epochs: 3", "--set")
    {'epochs': 3}
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ss4rec.errors import ConfigError

class SettingsLoader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e-8`` as a float as RecBole's own loader does (plain
    YAML 1.1 needs ``1.0e-8``); nothing else is added."""


SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)

MAX_YAML_BYTES = 1 << 20  # 1 MiB: a settings file is a few KB
MAX_VALUES = 100_000  # scalars, lists and mappings, aliases expanded
MAX_DEPTH = 64


def load_yaml(text: str, source: str):
    """``text`` parsed by YAML's safe loader; a ConfigError naming ``source`` when it is not
    valid YAML or too large, too deep or too alias-heavy to be settings."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters of YAML, over the {MAX_YAML_BYTES:,} a "
                          "settings text may have: give only the settings, not data")
    loader = SettingsLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{source}: YAML nested deeper than {MAX_DEPTH} levels: flatten it") from None
        if node is None:
            return None
        _check_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from exc
    finally:
        loader.dispose()


def read_yaml_file(path, what: str = "file"):
    """:func:`load_yaml` of a UTF-8 file; unreadable, oversized and non-UTF-8 files are ConfigErrors."""
    path = Path(path)
    source = f"{what} {path}"
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{source}: {path.stat().st_size:,} bytes, over the {MAX_YAML_BYTES:,} a "
                              "settings file may have: is it the right file?")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{source}: line {line}, column {column}: byte 0x{raw[exc.start]:02x} is not "
                          "UTF-8: save the file as UTF-8") from None
    return load_yaml(text, source)


def _check_size(root, source: str) -> None:
    """Refuse a node graph that is too deep or expands to more than MAX_VALUES values."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: YAML nested deeper than {MAX_DEPTH} levels: flatten it")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{source}: a YAML alias refers to a value that contains it: "
                              "settings must not be self-referencing")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        else:
            total = 1
        open_nodes.discard(key)
        if total > MAX_VALUES:
            raise ConfigError(f"{source}: the YAML stands for over {MAX_VALUES:,} values once its "
                              "aliases (*name) are expanded: write the settings out plainly")
        sizes[key] = total
        return total

    size(root, 0)
