"""The ``sharpscope`` command line (installed as the ``sharpscope_cli`` package)."""
