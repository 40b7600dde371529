"""``python -m sharpscope_cli``: the ``sharpscope`` command line."""

from sharpscope_cli.main import app

app(prog_name="sharpscope")
