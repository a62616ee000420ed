"""Load a mutant in-process under a temporary package name; never touch the user's files.

This is the regression guard's mechanism (:mod:`robustness.baseline`) applied to the working
tree instead of a git revision: the top-level package that holds the mutated module is
copied into a temporary directory under a unique name (``aam`` becomes
``aam_mut_<id>_<n>``), its own absolute imports are rewritten to that name
(:func:`robustness.baseline.rename_imports`), and the one mutated file is replaced by the
mutated source. The original ``aam`` stays imported and untouched beside it; the target specs
are rewritten to point at the copy (``aam.training.losses:MultiTaskLoss`` becomes
``aam_mut_....training.losses:MultiTaskLoss``), so sibling modules of the copy see the mutant
too. Leaving the context removes the directory and every module imported from it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from robustness.baseline import rename_imports
from robustness.errors import HarnessUsageError

__all__ = ["MutantPackage", "loaded_mutant", "module_file", "package_root", "remap_spec"]


def module_file(module: str) -> Path:
    """The source file of ``module`` (imports its parent packages, not the module itself).

    Raises:
        HarnessUsageError: if the module cannot be found or has no Python source.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise HarnessUsageError(f"cannot find module {module!r}: {exc}") from exc
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise HarnessUsageError(f"module {module!r} has no Python source file to mutate")
    return Path(spec.origin).resolve()


def package_root(module: str) -> tuple[str, Path]:
    """``(top-level name, its path)``: a package directory or a single module file."""
    top = module.partition(".")[0]
    path = module_file(top)
    return top, (path.parent if path.name == "__init__.py" else path)


def remap_spec(spec: str, old: str, new: str) -> str:
    """Point ``module[:attr]`` at the renamed top-level package when it lives inside ``old``."""
    module, sep, attr = spec.partition(":")
    if module == old or module.startswith(f"{old}."):
        module = new + module[len(old) :]
    return f"{module}{sep}{attr}"


@dataclass(frozen=True)
class MutantPackage:
    """A materialized mutant: the renamed top-level package and where it lies."""

    old: str
    new: str
    path: Path

    def spec(self, spec: str) -> str:
        """``spec`` rewritten to the mutant copy (unchanged when outside the package)."""
        return remap_spec(spec, self.old, self.new)


def _write_copy(root: Path, old: str, new: str, dest: Path, relpath: str, mutated: str) -> None:
    if root.is_file():
        (dest / f"{new}.py").write_text(rename_imports(mutated, old, new), encoding="utf-8")
        return
    target = dest / new
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    mutated_rel = Path(relpath).relative_to(old) if relpath.startswith(f"{old}/") else None
    for path in target.rglob("*.py"):
        rel = path.relative_to(target)
        text = mutated if rel == mutated_rel else path.read_text(encoding="utf-8")
        path.write_text(rename_imports(text, old, new), encoding="utf-8")


@contextlib.contextmanager
def loaded_mutant(
    module: str, relpath: str, mutated: str, workdir: Path, name: str
) -> Iterator[MutantPackage]:
    """Materialize ``mutated`` (the new source of ``module``) as package ``<top>_mut_<name>``.

    ``workdir`` must already be on ``sys.path`` (worker processes put it there once, before
    any child process is spawned, so that children find the copies too).
    """
    old, root = package_root(module)
    new = f"{old}_mut_{name}"
    _write_copy(root, old, new, workdir, relpath, mutated)
    importlib.invalidate_caches()
    try:
        yield MutantPackage(old, new, workdir / new)
    finally:
        for key in [k for k in sys.modules if k == new or k.startswith(f"{new}.")]:
            del sys.modules[key]
        copy = workdir / new
        if copy.is_dir():
            shutil.rmtree(copy, ignore_errors=True)
        else:
            (workdir / f"{new}.py").unlink(missing_ok=True)
