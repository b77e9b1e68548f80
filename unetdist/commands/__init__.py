"""One module per CLI command (see unetdist.cli)."""
