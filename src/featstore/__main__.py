"""``python -m featstore``: the ``featstore`` command, also under ``torchrun ... -m featstore``."""

from featstore_cli.featstore_app import app

app(prog_name="featstore")
