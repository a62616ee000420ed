"""The regression guard's baseline: which implementation to compare against, and on what.

A *baseline* is a loss class and/or metrics module named by import path, exactly like a
target. :func:`materialized` makes one from a git revision of the current repository: it
writes the top-level package that holds each module, as it was at that revision, into a
temporary directory under a unique package name (``aam`` at ``1a2b3c4d5e`` becomes
``aam_at_1a2b3c4d5e_<token>``), rewrites the package's own absolute imports to that name, and
puts the directory on ``sys.path``, so that the old and the working-tree code import side by
side in one process (and, through ``--robustness-baseline-path``, in xdist workers). On exit
it removes the directory, its ``sys.path`` entry and every module it imported, even when the
body raised.

:class:`RegressSelection` says which terms and metrics the differential rules compare
(``--regress-only`` / ``--regress-skip``); it is how an intentional change is approved.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tokenize
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from robustness.errors import HarnessUsageError

__all__ = [
    "BASELINE_ENV",
    "BASELINE_METRICS_ENV",
    "BASELINE_PATH_ENV",
    "LOSS_TERMS",
    "METRIC_FAMILIES",
    "REGRESS_ONLY_ENV",
    "REGRESS_SKIP_ENV",
    "BaselineRefError",
    "MaterializedBaseline",
    "RegressSelection",
    "materialized",
    "rename_imports",
]

#: Loss terms the differential rules compare (``MultiTaskLoss.forward``'s keys).
LOSS_TERMS = ("target_loss", "count_loss", "base_loss", "nuc_loss", "total_loss")
#: Metric families the differential rules compare; ``"<family>.<key>"`` names one value.
METRIC_FAMILIES = ("regression", "classification", "count")
_HEAD_TERMS = LOSS_TERMS[:-1]

#: Environment variables standing in for the options (the pytest plugin and the gate read them).
BASELINE_ENV = "ROBUSTNESS_BASELINE"
BASELINE_METRICS_ENV = "ROBUSTNESS_BASELINE_METRICS"
BASELINE_PATH_ENV = "ROBUSTNESS_BASELINE_PATH"
REGRESS_ONLY_ENV = "ROBUSTNESS_REGRESS_ONLY"
REGRESS_SKIP_ENV = "ROBUSTNESS_REGRESS_SKIP"


class BaselineRefError(HarnessUsageError):
    """A git revision baseline cannot be made: no repository, no such revision or module."""


# --------------------------------------------------------------------------- selection


def _names(text: str | Iterable[str] | None, option: str) -> frozenset[str] | None:
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = frozenset(p.strip() for p in parts if p.strip())
    for name in sorted(names):
        family, dot, key = name.partition(".")
        if name in LOSS_TERMS or (family in METRIC_FAMILIES and (not dot or key)):
            continue
        raise HarnessUsageError(
            f"{option}: unknown term {name!r}; use loss terms {', '.join(LOSS_TERMS)} or metric "
            f"families {', '.join(METRIC_FAMILIES)} (one value: e.g. 'regression.r2')"
        )
    return names


@dataclass(frozen=True)
class RegressSelection:
    """Which loss terms and metrics the differential rules (C-REGRESS-*) compare.

    ``only`` limits the comparison to the named terms (``None``: everything); ``skip``
    excludes terms (an approved change). Loss terms are ``target_loss`` ... ``total_loss``;
    metrics are a family (``regression``, ``classification``, ``count``) or one value of it
    (``regression.r2``). ``total_loss`` sums every head, so it is compared only when no head
    term is skipped and, under ``only``, when it is named itself.
    """

    only: frozenset[str] | None = None
    skip: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(
        cls, only: str | Iterable[str] | None = None, skip: str | Iterable[str] | None = None
    ) -> RegressSelection:
        """Build a selection from comma-separated names (or iterables of names).

        Raises:
            HarnessUsageError: naming an unknown term and the known ones.
        """
        only_names = _names(only, "--regress-only")
        skip_names = _names(skip, "--regress-skip") or frozenset()
        return cls(only=only_names or None, skip=skip_names)

    @property
    def everything(self) -> bool:
        """Whether nothing is limited or skipped."""
        return self.only is None and not self.skip

    def compares(self, term: str) -> bool:
        """Whether the loss term or metric family ``term`` is compared (at least in part)."""
        if term in self.skip:
            return False
        if term == "total_loss" and any(head in self.skip for head in _HEAD_TERMS):
            return False
        if self.only is None:
            return True
        return term in self.only or any(name.startswith(f"{term}.") for name in self.only)

    def keys(self, family: str) -> tuple[str, ...] | None:
        """The only keys of ``family`` to compare (``None``: every key of the baseline)."""
        if self.only is None or family in self.only:
            return None
        return tuple(sorted(n.partition(".")[2] for n in self.only if n.startswith(f"{family}.")))

    def ignored(self, family: str) -> tuple[str, ...]:
        """Keys of ``family`` that are skipped."""
        return tuple(sorted(n.partition(".")[2] for n in self.skip if n.startswith(f"{family}.")))

    def describe(self) -> str:
        """``"only a, b; skip c"`` or ``"everything"``."""
        parts = []
        if self.only is not None:
            parts.append(f"only {', '.join(sorted(self.only))}")
        if self.skip:
            parts.append(f"skip {', '.join(sorted(self.skip))}")
        return "; ".join(parts) or "everything"


# --------------------------------------------------------------------------- import renaming


def rename_imports(source: str, old: str, new: str) -> str:
    """Rewrite absolute references to top-level package ``old`` as ``new`` in ``source``.

    Every name token ``old`` that is not an attribute (``x.old``) and not a name imported
    *from* a module (``from m import old``) becomes ``new``: ``import old.a``,
    ``from old.a import b``, ``old.a.f()`` after ``import old.a``. Relative imports need
    nothing. Strings are left alone (an ``importlib.import_module("old.a")`` keeps importing
    the working tree's module).

    Raises:
        HarnessUsageError: if ``source`` cannot be tokenized.
    """
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int]] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise HarnessUsageError(f"cannot tokenize a module of {old!r}: {exc}") from exc
    statement: str | None = None  # "import" / "from" while inside such a statement
    after_import = False  # inside "from x import <here>"
    previous: tokenize.TokenInfo | None = None
    for token in tokens:
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or (
            token.type == tokenize.OP and token.string == ";"
        ):
            statement, after_import = None, False
        elif token.type == tokenize.NAME and token.string in ("import", "from"):
            if statement == "from" and token.string == "import":
                after_import = True
            elif statement is None and (
                previous is None
                or previous.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT)
                or previous.type == tokenize.DEDENT
                or (previous.type == tokenize.OP and previous.string in (";", ":"))
            ):
                statement = token.string
        elif token.type == tokenize.NAME and token.string == old:
            attribute = previous is not None and previous.string == "."
            imported_member = statement == "from" and after_import
            if not (attribute or imported_member):
                edits.append(token.start)
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token
    for row, col in reversed(edits):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new + line[col + len(old) :]
    return "".join(lines)


# --------------------------------------------------------------------------- git revisions


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=False)
    except FileNotFoundError:
        raise BaselineRefError("--baseline-ref needs git, which is not installed") from None


def _toplevel(cwd: Path) -> Path:
    done = _git(cwd, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise BaselineRefError(
            f"--baseline-ref needs a git repository, but {str(cwd)!r} is not inside one"
        )
    return Path(done.stdout.decode().strip())


def _commit(repo: Path, ref: str) -> str:
    if not ref or ref.startswith("-"):
        raise BaselineRefError(f"--baseline-ref: {ref!r} is not a revision")
    done = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if done.returncode != 0:
        raise BaselineRefError(
            f"--baseline-ref: revision {ref!r} does not exist in the git repository at "
            f"{str(repo)!r}"
        )
    return done.stdout.decode().strip()


def _exists(repo: Path, commit: str, path: PurePosixPath) -> bool:
    return _git(repo, "cat-file", "-e", f"{commit}:{path}").returncode == 0


def _package_path(repo: Path, commit: str, top: str) -> PurePosixPath | None:
    """Where top-level package (or module) ``top`` lives in the repository at ``commit``."""
    candidates: list[PurePosixPath] = []
    spec = importlib.util.find_spec(top) if top not in sys.builtin_module_names else None
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        origin = locations[0] if locations else spec.origin
        if origin:
            with contextlib.suppress(ValueError):
                candidates.append(
                    PurePosixPath(Path(origin).resolve().relative_to(repo).as_posix())
                )
    candidates += [PurePosixPath(top), PurePosixPath("src", top), PurePosixPath(f"{top}.py")]
    for candidate in candidates:
        if _exists(repo, commit, candidate):
            return candidate
    return None


def _module_file(package: PurePosixPath, module: str) -> list[PurePosixPath]:
    """Paths (either of which will do) of ``module`` inside the tree of its top package."""
    parts = module.split(".")[1:]
    if package.suffix == ".py":
        return [package] if not parts else []
    if not parts:
        return [package / "__init__.py", package]
    return [package.joinpath(*parts).with_suffix(".py"), package.joinpath(*parts, "__init__.py")]


@dataclass(frozen=True)
class MaterializedBaseline:
    """Packages of a git revision written side by side with the working tree.

    Attributes:
        ref: the revision as given; ``commit`` its full hash.
        path: the directory (on ``sys.path`` while the context is open) holding the packages.
        packages: original top-level name -> the unique name it is importable under.
    """

    ref: str
    commit: str
    path: Path
    packages: dict[str, str]

    def rename(self, module: str) -> str:
        """The importable name of ``module`` (``aam.training.losses``) at the revision."""
        top, dot, rest = module.partition(".")
        return self.packages[top] + dot + rest

    def spec(self, spec: str) -> str:
        """A ``module[:Class]`` spec rewritten to the materialized module."""
        module, sep, attr = spec.partition(":")
        return self.rename(module) + sep + attr


def _write_tree(
    repo: Path, commit: str, source: PurePosixPath, dest: Path, rename: dict[str, str]
) -> None:
    archive = _git(repo, "archive", "--format=tar", commit, "--", str(source))
    if archive.returncode != 0:
        raise BaselineRefError(
            f"--baseline-ref: cannot read {str(source)!r} at {commit[:10]}: "
            f"{archive.stderr.decode().strip()}"
        )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue  # directories are made as needed; links are not followed
            relative = PurePosixPath(member.name).relative_to(
                source.parent if source.suffix else source
            )
            if ".." in relative.parts:
                continue
            target = dest.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            extracted = tar.extractfile(member)
            assert extracted is not None
            data = extracted.read()
            if target.suffix == ".py":
                text = data.decode("utf-8")
                for old, new in rename.items():
                    text = rename_imports(text, old, new)
                data = text.encode("utf-8")
            target.write_bytes(data)


def _forget(names: Iterable[str]) -> None:
    prefixes = tuple(f"{name}." for name in names)
    for module in [m for m in sys.modules if m in names or m.startswith(prefixes)]:
        del sys.modules[module]


@contextlib.contextmanager
def materialized(
    ref: str, modules: Sequence[str], *, cwd: str | os.PathLike[str] | None = None
) -> Iterator[MaterializedBaseline]:
    """Make the top-level packages of ``modules`` at git revision ``ref`` importable.

    Args:
        ref: any revision git understands (``main``, ``HEAD~1``, a merge-base hash).
        modules: module paths (``aam.training.losses``) that must exist at ``ref``; the whole
            top-level package of each is written, so its internal imports keep working.
        cwd: a directory inside the repository (default: the current directory).

    Yields:
        The :class:`MaterializedBaseline`; its directory is on ``sys.path`` until exit.

    Raises:
        BaselineRefError: (one line) outside a git repository, for a revision that does not
            exist, or a module that did not exist at that revision.
    """
    repo = _toplevel(Path(cwd or os.getcwd()))
    commit = _commit(repo, ref)
    token = uuid.uuid4().hex[:6]
    sources: dict[str, PurePosixPath] = {}
    for module in modules:
        top = module.partition(".")[0]
        if top in sources:
            package: PurePosixPath | None = sources[top]
        else:
            package = _package_path(repo, commit, top)
        files = _module_file(package, module) if package is not None else []
        if package is None or not any(_exists(repo, commit, f) for f in files):
            raise BaselineRefError(
                f"--baseline-ref: module {module!r} did not exist at revision {ref!r} "
                f"({commit[:10]}) of the git repository at {str(repo)!r}"
            )
        sources[top] = package
    packages = {top: f"{top}_at_{commit[:10]}_{token}" for top in sources}
    directory = Path(tempfile.mkdtemp(prefix="robustness-baseline-"))
    added = str(directory)
    try:
        for top, source in sources.items():
            dest = directory / packages[top]
            if source.suffix == ".py":
                _write_tree(repo, commit, source, directory, packages)
                (directory / source.name).rename(directory / f"{packages[top]}.py")
            else:
                _write_tree(repo, commit, source, dest, packages)
        sys.path.insert(0, added)
        importlib.invalidate_caches()
        yield MaterializedBaseline(ref=ref, commit=commit, path=directory, packages=packages)
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(added)
        _forget(packages.values())
        shutil.rmtree(directory, ignore_errors=True)
