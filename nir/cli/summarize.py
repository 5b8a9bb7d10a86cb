"""``nir-summarize``: a sweep's results table (the work is :mod:`nir.run.sweep`'s)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nir.errors import cli_errors, require
from nir.run.sweep import write_summary


def main(argv: list[str] | None = None) -> None:
    """``nir-summarize SWEEP_DIR [--sort METRIC]``: print and write the sweep's results table."""
    ap = argparse.ArgumentParser(prog="nir-summarize", description=main.__doc__)
    ap.add_argument("sweep_dir")
    ap.add_argument("--sort", default="psnr", help="metric to sort by (default psnr; errors and times sort ascending)")
    args = ap.parse_args(argv)
    with cli_errors():
        require(Path(args.sweep_dir).is_dir(), f"sweep directory {args.sweep_dir!r} does not exist")
        rows, table = write_summary(args.sweep_dir, args.sort)
        require(rows, f"{args.sweep_dir!r} holds no Hydra job directories (.hydra/overrides.yaml)")
        print(table, end="")
        print("relative errors (worst_decade_median) are fractions: 0.05 = 5 %")
        print(f"wrote {Path(args.sweep_dir) / 'summary.csv'} and summary.md")


if __name__ == "__main__":
    main()
