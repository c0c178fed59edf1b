"""One module per ``ss4rec`` subcommand; see :mod:`ss4rec.cli`."""
