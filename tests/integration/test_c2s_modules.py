"""tests/integration/test_c2s_modules.py - c2s features are modules: listed once in c2s/modules.c, none includes or calls another (checked on the sources and the built objects)."""
import os
import re
import subprocess


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
C2S = os.path.join(ROOT, "c2s")
OBJ = os.path.join(os.environ.get("MEERKAT_BUILD", os.path.join(ROOT, "build")), "obj", "c2s")


def listed_modules():
    src = open(os.path.join(C2S, "modules.c")).read()
    body = re.search(r"#define C2S_MODULES\(X\)(.*?)\n\n", src, re.S).group(1)
    return re.findall(r"X\((\w+)\)", body)


def module_files():
    """{module name: source file} for every file defining a `const struct c2s_module <name>_module`."""
    out = {}
    for f in sorted(os.listdir(C2S)):
        if f.endswith(".c"):
            for m in re.finditer(r"^const struct c2s_module (\w+)_module = ", open(os.path.join(C2S, f)).read(), re.M):
                out[m.group(1)] = f
    return out


def nm(obj, *flags):
    """The object's symbols (nm with flags), leaving out the compiler's and sanitizers' own (__*)."""
    out = subprocess.run(["nm", *flags, obj], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip() and not line.split()[-1].startswith("__")}


def test_every_module_is_listed_once():
    listed = listed_modules()
    assert len(listed) == len(set(listed)) and listed
    assert sorted(listed) == sorted(module_files())


def test_no_module_includes_another():
    files = set(module_files().values())
    assert files, "no file defines a struct c2s_module"
    own_headers = {f[:-2] + ".h" for f in files}
    for f in files:
        for inc in re.findall(r'^#include "([^"]+)"', open(os.path.join(C2S, f)).read(), re.M):
            assert not (inc in own_headers and inc != f[:-2] + ".h"), f"{f} includes {inc}"
            assert inc != "features.h"


def test_no_module_calls_another():
    """What a module's object needs from outside, no other module's object defines; and
    each exports only its table and its own prefix."""
    assert os.path.isdir(OBJ), f"no built c2s objects in {OBJ}: the integration tests run after the build"
    files = module_files()
    assert files, "no file defines a struct c2s_module"
    defined = {name: nm(os.path.join(OBJ, f[:-2] + ".o"), "-g", "--defined-only") for name, f in files.items()}
    for name, f in files.items():
        obj = os.path.join(OBJ, f[:-2] + ".o")
        prefix = f[:-2] + "_"
        assert all(s == f"{name}_module" or s.startswith(prefix) for s in defined[name]), (f, defined[name])
        needed = nm(obj, "-u")
        for other, syms in defined.items():
            if other != name:
                assert not (needed & syms), f"{f} uses {sorted(needed & syms)} of module {other}"
