"""Meta-tests: every hook is documented with its exact signature and has a test."""
from __future__ import annotations

import inspect
import re

from conftest import ROOT

from hiclaw import hookspecs


def hook_functions():
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if name.startswith("hiclaw_") and callable(fn) and hasattr(fn, "hiclaw_spec")
    }


def signature_text(name, fn) -> str:
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {name}({params}) -> {sig.return_annotation}"


def test_there_are_hooks():
    assert len(hook_functions()) >= 11


def test_every_hook_is_documented_with_its_exact_signature():
    docs = (ROOT / "docs" / "plugins" / "hooks.md").read_text()
    for name, fn in hook_functions().items():
        assert f"\n## `{name}`" in docs, f"docs/plugins/hooks.md has no section for {name}"
        assert signature_text(name, fn) in docs, f"docs/plugins/hooks.md: signature of {name} differs: {signature_text(name, fn)}"
        assert (fn.__doc__ and ":param" in fn.__doc__) or not inspect.signature(fn).parameters


def test_every_hook_has_a_test():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    for name in hook_functions():
        assert re.search(rf"def test_hook_{name}\b", sources), f"no test_hook_{name} in tests/"


def test_docs_list_no_hook_that_does_not_exist():
    docs = (ROOT / "docs" / "plugins" / "hooks.md").read_text()
    documented = set(re.findall(r"^## `(hiclaw_[a-z_]+)`", docs, flags=re.M))
    assert documented == set(hook_functions())
