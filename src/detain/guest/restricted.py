"""Run a snippet or a script compiled by RestrictedPython, inside the `restricted` sandbox.

RestrictedPython rewrites the code so that attribute access, item access, iteration,
writes and augmented assignment go through guard functions, and refuses names and
attributes starting with `_`. The job gets RestrictedPython's safe builtins plus the
common iteration builtins, `print` to stdout, and `import` limited to a few pure modules.
This is a language-level filter, not an isolation boundary (the seeds: "hard to close all
escape vectors"); the process backend's confinement still holds underneath it.
"""

import builtins
import operator
import sys

from RestrictedPython import compile_restricted_exec, limited_builtins, safe_builtins
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safer_getattr,
)
from RestrictedPython.PrintCollector import PrintCollector

# Pure-computation modules without file, process, introspection or attribute-by-name
# access (no operator: attrgetter would bypass the attribute guard; no string: its
# Formatter reaches attributes through format fields).
ALLOWED_IMPORTS = frozenset({
    "math", "cmath", "json", "re", "random", "datetime", "decimal", "fractions",
    "statistics", "itertools", "collections", "heapq", "bisect",
})
# Iterating builtins RestrictedPython leaves out because they bypass `_getiter_`; the
# guard here is the identity, so they give nothing the guarded loops would not.
ITERATING = ("list", "dict", "set", "frozenset", "tuple", "sorted", "reversed", "enumerate",
             "zip", "sum", "min", "max", "all", "any", "map", "filter", "iter", "next",
             "bytes")
INPLACE = {"+=": operator.iadd, "-=": operator.isub, "*=": operator.imul,
           "/=": operator.itruediv, "//=": operator.ifloordiv, "%=": operator.imod,
           "**=": operator.ipow, "<<=": operator.ilshift, ">>=": operator.irshift,
           "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor,
           "@=": operator.imatmul}


class StdoutPrint(PrintCollector):
    """`print` writes to the real stdout instead of RestrictedPython's `printed` buffer."""

    def write(self, text):
        sys.stdout.write(text)


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level != 0 or name not in ALLOWED_IMPORTS:
        raise ImportError("import of %r is not allowed under the restricted backend "
                          "(allowed: %s)" % (name, ", ".join(sorted(ALLOWED_IMPORTS))))
    return __import__(name, globals, locals, fromlist, level)


def inplacevar(op, target, value):
    if op not in INPLACE:
        raise SyntaxError("augmented assignment %s is not allowed" % op)
    return INPLACE[op](target, value)


def restricted_globals():
    allowed = dict(safe_builtins)
    allowed.update(limited_builtins)
    allowed.update({name: getattr(builtins, name) for name in ITERATING})
    allowed["__import__"] = guarded_import
    return {
        "__builtins__": allowed, "__name__": "__main__", "__metaclass__": type,
        "_getattr_": safer_getattr, "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter, "_write_": full_write_guard,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence, "_inplacevar_": inplacevar,
        "_print_": StdoutPrint, "_apply_": lambda func, *args, **kwargs: func(*args, **kwargs),
    }


def run(kind, target, args):
    if kind == "script":
        with open(target, encoding="utf-8") as handle:
            source, filename = handle.read(), target
    elif kind == "code":
        source, filename = target, "<string>"
    else:
        raise SystemExit("detain: the restricted backend runs only -c snippets and scripts")
    sys.argv = [filename if kind == "script" else "-c", *args]
    compiled = compile_restricted_exec(source, filename)
    if compiled.errors:
        for error in compiled.errors:
            sys.stderr.write("RestrictedPython refused the code: %s\n" % error)
        sys.exit(1)
    exec(compiled.code, restricted_globals())
