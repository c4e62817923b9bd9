"""Every lazily exported name of the packages resolves (a typo in an export table would
otherwise surface only when a user touches that name), and an unknown one names its package."""

import importlib

import pytest

PACKAGES = ["ptobj.objectives", "ptobj.data_pipeline", "ptobj.models", "ptobj.hf"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_listed_name_resolves_and_unknown_names_are_named(package):
    mod = importlib.import_module(package)
    names = [n for n in dir(mod) if not n.startswith("_")]
    assert set(getattr(mod, "__all__", [])) <= set(names)
    for name in names:
        assert getattr(mod, name) is not None, name
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        getattr(mod, "no_such_name")


def test_an_export_stays_what_it_was_after_its_module_is_imported():
    """Python binds ``pkg.NAME`` to the submodule ``pkg.NAME`` once anything imports it, so an
    attribute exported under its own module's name would turn into the module behind the
    user's back (``ptobj.data_pipeline.collate`` did). In a fresh interpreter: each export,
    read before and after its namesake submodule is imported, is the same object."""
    import subprocess
    import sys

    code = f"""
import importlib, warnings
warnings.simplefilter("ignore")
for package in {PACKAGES!r}:
    mod = importlib.import_module(package)
    for name in sorted(set(n for n in dir(mod) if not n.startswith("_")) | set(getattr(mod, "__all__", ()))):
        before = getattr(mod, name)
        try:
            importlib.import_module(package + "." + name)
        except ImportError:
            continue
        assert getattr(mod, name) is before, (package, name, before, getattr(mod, name))
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
