"""``nir-field``: sample or export a trained field from the shell (the work is
:class:`~nir.reuse.field.Field`'s)."""

from __future__ import annotations

from nir.errors import cli_errors
from nir.reuse.field import load_field


def main(argv: list[str] | None = None) -> None:
    """``nir-field``: sample or export a trained field from the shell."""
    import argparse

    ap = argparse.ArgumentParser(prog="nir-field", description="Sample or export a trained nir field.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="evaluate on a grid and write .npy / .png / .tif / .nc / .h5 / .zarr")
    s.add_argument("field", help="run directory, field.nir, field.safetensors or .ckpt")
    s.add_argument(
        "out",
        help="output file: .npy, .png, .tif, or .nc / .h5 / .zarr (an xarray variable with the source's dimensions, coordinates and attributes)",
    )
    s.add_argument("--shape", type=int, nargs="+", help="grid shape (default: the training grid)")
    s.add_argument("--scale", type=float, default=None, help="multiply the training grid's shape by this")
    s.add_argument("--device", default="cpu")
    e = sub.add_parser("export", help="export to .pt2 (torch.export) or .onnx")
    e.add_argument("field")
    e.add_argument("out")
    args = ap.parse_args(argv)
    with cli_errors():
        field = load_field(args.field, device=getattr(args, "device", "cpu"))
        if args.cmd == "sample":
            shape = args.shape or (field.spec["shape"] if args.scale else None)  # None: the training grid
            if args.scale:
                shape = [max(1, round(v * args.scale)) for v in shape]
            out = field.sample(shape, out=args.out)
            print(f"wrote {args.out}: shape {tuple(out.shape)}")
        else:
            field.export(args.out)
            print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
