"""Command line for the data layer.

    python -m kexue_jax.data prepare digits --data_dir DIR   # write an embedded set as a tfds dataset
    python -m kexue_jax.data prepare kexue_mnist5k           # same; tfds names work too
    python -m kexue_jax.data list                            # embedded names and their tfds builders

The default --data_dir is $KEXUE_JAX_TFDS_DIR, else ~/tensorflow_datasets. Afterwards
`data.load('tfds:kexue_digits', 'train', data_dir=DIR)` reads it back, identical to `data.load('digits', ...)`.
"""
from __future__ import annotations

import argparse
import sys

from kexue_jax import data
from kexue_jax.data.embedded import SPECS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kexue_jax.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write an embedded dataset as tfds array_record files")
    names = list(SPECS) + [spec.tfds_name for spec in SPECS.values()]
    prep.add_argument("name", choices=names, metavar="NAME", help=f"one of {names}")
    prep.add_argument("--data_dir", default=None,
                      help=f"tfds data directory (default ${data.DATA_DIR_ENV}, else ~/tensorflow_datasets)")
    commands.add_parser("list", help="list the embedded datasets")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        path = data.prepare(args.name, data_dir=args.data_dir)
        print(f"prepared {args.name} in {path}")
    else:
        for spec in SPECS.values():
            print(f"{spec.name:14s} tfds:{spec.tfds_name:24s} {spec.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
