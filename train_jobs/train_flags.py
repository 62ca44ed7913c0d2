"""The flags of a training run, defined once for ``raymedic train`` and ``python -m train_jobs.train``.

Apart from :mod:`train_jobs.train` (which loads PyTorch) on purpose: ``raymedic
--help`` builds its parser from this module and must stay instant, so it imports
nothing but :mod:`argparse`. (The search flags live the same way in
:func:`train_jobs.search.add_arguments`.)
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the training flags to ``p`` (every flag but ``--config``, which each caller adds itself).

    One definition, so the CLI sub-command and the ``ray job submit`` entry point
    accept the same flags and :func:`train_jobs.train.resolve_cli_inputs` reads
    either the same way.

    Args:
        p: The parser (or sub-parser) to extend.
    """
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="Parquet or CSV table.")
    src.add_argument("--synthetic", action="store_true", help="Use the built-in synthetic table.")
    p.add_argument("--target", help="Target column of --data.")
    p.add_argument("--model", help="Model name (default: the file's stem).")
    p.add_argument("--storage-path", help="Override the config's storage_path.")
    p.add_argument("--members", nargs="+", help="Train only these members.")
    p.add_argument("--no-promote", action="store_true", help="Register without moving the champion alias.")
    p.add_argument("--json", action="store_true", help="Print the training report as JSON.")
