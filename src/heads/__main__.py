"""``python -m heads ...`` (and ``torchrun --nproc-per-node N -m heads train ...``)."""

from featstore_cli.heads_app import main

main()
