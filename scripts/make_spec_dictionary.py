"""Write the dictionary the compact field file codes its spec against (``nir/data/spec-dictionary-N.json``).

The dictionary is the canonical spec text of every shipped model preset on every shipped data
preset it builds on, so a field built from the shipped configs codes its spec as a few
references into it (zstd, raw-content dictionary). A field file names its format version, and
each version reads with its own dictionary: this script writes a new file for a new version and
never rewrites one that shipped (old files would no longer decode).

    .venv/bin/python scripts/make_spec_dictionary.py 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = [["data=image"], ["data=peaks1d"], ["data=lognormal3d"], ["data=sources3d"]]
ARRAYS = [(1000,), (64, 64), (32, 32, 32), (8, 8, 8, 8)]  # a user's data=array file, 1-D to 4-D


def specs(tmp: Path) -> list[str]:
    import numpy as np

    from nir.codec.container import spec_text
    from nir.run.config import CONF_DIR, compose_config
    from nir.run.parts import build, build_field

    data_options = list(DATA)
    for shape in ARRAYS:
        path = tmp / f"{len(shape)}d" / "field.npy"
        path.parent.mkdir()
        np.save(path, np.random.default_rng(0).lognormal(size=shape).astype(np.float32))
        data_options.append(["data=array", f"data.path={path}"])
    models = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml") if p.stem != "auto")
    out, signals = [], {}
    for options, model in itertools.product(data_options, models):
        data = " ".join(options)
        cfg, _ = compose_config([*options, f"model={model}"])
        if data not in signals:
            signals[data] = build(cfg.data, "data")
        signal = signals[data]
        dims = {"in_dim": signal.ndim, "out_dim": signal.channels}
        if cfg.model.get("bounds", "absent") is None:
            dims["bounds"] = [list(b) for b in signal.bounds]
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                field = build_field(cfg, cfg.model, dims, signal)
        except Exception as e:  # a preset for another dimension (e.g. a 1-D grid on an image)
            print(f"skip {data} x {model}: {str(e).splitlines()[0][:80]}", file=sys.stderr)
            continue
        out.append(spec_text(field.spec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("version", type=int)
    args = ap.parse_args()
    path = ROOT / "nir" / "data" / f"spec-dictionary-{args.version}.json"
    if path.exists():
        raise SystemExit(f"{path} exists: a shipped dictionary is never rewritten; make a new version")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = "\n".join(specs(Path(tmp))) + "\n"
    path.write_text(text)
    print(f"wrote {path}: {len(text):,} bytes")


if __name__ == "__main__":
    main()
