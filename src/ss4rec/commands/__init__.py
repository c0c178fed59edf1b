"""One module per ``ss4rec`` subcommand; see :mod:`ss4rec.cli`.

Layer rule: the command boundary. Each module's ``add_arguments`` imports nothing heavy, so
``ss4rec --help`` loads no torch or RecBole; its ``run`` imports the library lazily.
"""
