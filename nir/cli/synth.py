"""``nir-synth``: write one of the seeded long-tailed generators (:mod:`nir.data.synthetic`) to ``.npy``."""

from __future__ import annotations

import sys

import numpy as np

from nir.data.synthetic import GENERATORS
from nir.errors import NirError, cli_errors, require


def main(argv: list[str] | None = None) -> None:
    """``nir-synth NAME OUT.npy [key=value ...]``: write a generated field to ``.npy``."""
    import yaml

    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: nir-synth {{{','.join(GENERATORS)}}} OUT.npy [key=value ...]"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage + "\n\nWrite a seeded long-tailed test field to .npy; key=value pairs set the generator's")
        print("arguments (e.g. nir-synth sources3d src.npy n=128 seed=1). The generators:")
        for gname, fn in GENERATORS.items():
            print(f"  {gname:12s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        print("Each one's keys and defaults: pydoc nir.data.synthetic.<name> (or conf/data/<name>.yaml).")
        return
    with cli_errors():
        require(len(argv) >= 2, f"{usage} (nir-synth --help for more)")
        name, out = argv[0], argv[1]
        require(name in GENERATORS, f"unknown generator {name!r}; choose one of: {', '.join(GENERATORS)}")
        require(out.endswith(".npy"), f"output {out!r} must end in .npy")
        kwargs = {}
        for kv in argv[2:]:
            require("=" in kv, f"argument {kv!r} is not key=value")
            k, v = kv.split("=", 1)
            kwargs[k] = yaml.safe_load(v)
        try:
            sig = GENERATORS[name](**kwargs)
        except TypeError as e:
            raise NirError(f"{name}: {e}") from None
        np.save(out, sig.values[..., 0].numpy())
        v = sig.values
        print(f"wrote {out}: shape {tuple(sig.shape)}, min {float(v.min()):.3g}, max {float(v.max()):.3g}")


if __name__ == "__main__":
    main()
