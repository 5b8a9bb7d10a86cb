"""The shape of the package (issue 11): sizes, import rules, and library calls without
process-wide side effects. Each check reads the code or runs it in a fresh process."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nir"
MAX_FUNCTION_LINES = 60


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_in_the_package_is_longer_than_60_lines():
    long = [
        f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)"
        for p in sorted(PACKAGE.rglob("*.py"))
        for name, line, n in _functions(p)
        if n > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_entry_point_and_lightning_module_stay_small():
    assert len((PACKAGE / "train.py").read_text().splitlines()) <= 150
    tree = ast.parse((PACKAGE / "module.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FieldModule"]
    assert cls.end_lineno - cls.lineno + 1 <= 150


# networks, signals, losses, metrics, transforms and the reuse API know nothing of Lightning or Hydra
LIGHT = [
    "nir",
    "nir.fields",
    "nir.field",
    "nir.signal",
    "nir.synthetic",
    "nir.losses",
    "nir.metrics",
    "nir.transforms",
    "nir.checkpoint",
    "nir.faults",
    "nir.samplers",
    "nir.components",
    "nir.storage",
    "nir.steps",
    "nir.holdout",
    "nir.optim",
    "nir.errors",
    "nir.allocator",
]


def test_core_modules_import_without_lightning_or_hydra():
    code = (
        f"import sys, json\nfor m in {LIGHT!r}: __import__(m)\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules} & {'pytorch_lightning', 'lightning', 'hydra'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_loading_a_field_needs_neither_lightning_nor_hydra():
    ckpt = ROOT / "tests" / "data" / "legacy" / "siren_tiny.ckpt"
    code = (
        f"import sys, nir\nf = nir.load_field({str(ckpt)!r})\n"
        "print(sorted({k.split('.')[0] for k in sys.modules} & {'pytorch_lightning', 'lightning', 'hydra'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


FIT_LEAVES_PROCESS_ALONE = r"""
import ctypes, json, sys, warnings
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def big_block_is_mapped():
    # glibc serves a 64 MB malloc with mmap unless M_MMAP_THRESHOLD was raised above it
    before = libc.mallinfo2().hblks
    p = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblks > before
    libc.free(p)
    return mapped

import nir
filters = list(warnings.filters)
mapped_before = big_block_is_mapped()
field, metrics = nir.fit(np.random.default_rng(0).random((24, 20)).astype(np.float32), run_dir=sys.argv[1], steps=3,
                         model="siren", model__hidden_dim=8, log__images=False, trainer__enable_progress_bar=False)
print(json.dumps({"filters_unchanged": list(warnings.filters) == filters,
                  "mapped_before": mapped_before, "mapped_after": big_block_is_mapped()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator check")
def test_nir_fit_leaves_warning_filters_and_allocator_unchanged(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", FIT_LEAVES_PROCESS_ALONE, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r == {"filters_unchanged": True, "mapped_before": True, "mapped_after": True}
    # a fresh process imports Lightning inside nir.fit: its banner and advert stay silent there too
    for noise in ("GPU available", "TPU available", "litlogger"):
        assert noise not in out.stdout + out.stderr, noise


def test_the_allocator_check_sees_tune_allocator(tmp_path):
    """The probe above can fail: after tune_allocator() a 64 MB block is no longer mapped."""
    code = FIT_LEAVES_PROCESS_ALONE.split("import nir\n")[0] + (
        "from nir.allocator import tune_allocator\nassert tune_allocator()\nprint(big_block_is_mapped())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def _imported_modules(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
    return mods


def test_scripts_import_nir_never_the_tests_or_each_other():
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    bad = {
        p.name: sorted(m for m in _imported_modules(p) if m.split(".")[0] in {"tests", *scripts})
        for p in sorted((ROOT / "scripts").glob("*.py"))
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_dispatch_on_kind_strings_or_class_names_in_the_package():
    """Capabilities are attributes (signal.is_image, a network's divergence_causes), not labels."""
    offenders = []
    for p in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                text = ast.unparse(node)
                if "__name__ ==" in text and "__main__" not in text:
                    offenders.append(f"{p.name}:{node.lineno} {text}")
                if "'kind')" in text and "==" in text and p.name != "field.py":  # field.py: one legacy spec upgrade
                    offenders.append(f"{p.name}:{node.lineno} {text}")
    assert offenders == []


def test_networks_import_nothing_above_them():
    """nir/fields/ (networks, encodings) may use nir.errors and nir.components, nothing of the
    reuse API, the data path or the training loop."""
    allowed = {"nir.errors", "nir.components"}
    found = {
        p.name: sorted(
            m
            for m in _imported_modules(p)
            if m.startswith("nir") and m not in allowed and not m.startswith("nir.fields")
        )
        for p in sorted((PACKAGE / "fields").glob("*.py"))
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_every_link_between_the_docs_resolves():
    """README.md and docs/*.md link only to files that exist (one performance page, one long-tail guide)."""
    import re

    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.name} -> {target}")
    assert missing == []


def test_a_generated_section_replaces_only_itself(tmp_path):
    from nir.benchmark import write_section

    page = tmp_path / "p.md"
    page.write_text(
        "intro\n<!-- a: begin -->\nold a\n<!-- a: end -->\n<!-- a --x: begin -->\nold ax\n<!-- a --x: end -->\nend\n"
    )
    write_section(page, "a", "new a")
    assert (
        page.read_text()
        == "intro\n<!-- a: begin -->\nnew a\n<!-- a: end -->\n<!-- a --x: begin -->\nold ax\n<!-- a --x: end -->\nend\n"
    )
    write_section(page, "b", "new b")
    assert page.read_text().endswith("end\n\n<!-- b: begin -->\nnew b\n<!-- b: end -->\n")
