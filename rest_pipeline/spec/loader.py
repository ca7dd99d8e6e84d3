"""Reading spec files: strict YAML, a branch completed with its parent, errors naming file and field,
and where specs are found (the packaged ones, then REST_EXPERIMENTS_DIR)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from rest_pipeline.spec.base import SpecError
from rest_pipeline.spec.experiment import _REPLACED_WHOLE, BRANCH_INHERITED, ExperimentSpec

SPEC_DIR = Path(__file__).resolve().parent.parent / "specs"


class _SpecLoader(yaml.SafeLoader):
    """YAML as people write specs: a repeated key is an error (not "last wins"), and 1e-3 is a number."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid experiment spec"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  field '{field}': {e['msg']}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError as e:
        raise SpecError(f"{path}: spec file not found") from e
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    _anchor_data_files(path, raw)
    if "branch" in raw:
        raw = _with_parent(path, raw)
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_format_errors(path, e)) from None
    if spec.name != path.stem:
        raise SpecError(f"{path}: field 'name' is '{spec.name}' but the file is named '{path.stem}.yaml'")
    return spec


def _anchor_data_files(path: Path, raw: dict) -> None:
    """Relative `data.files` paths (and a `policy.pretrained_path` folder beside the spec) are read from the
    spec file's folder, wherever `rest` runs."""
    files = raw.get("data", {}).get("files") if isinstance(raw.get("data"), dict) else None
    if not isinstance(files, dict):
        return
    here = path.resolve().parent

    def anchor(value: object) -> object:
        if isinstance(value, str) and value.startswith("hf://"):
            return value  # a hub dataset file, not a path
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            return str(here / value)
        if isinstance(value, str):
            return str(Path(value).expanduser())
        if isinstance(value, dict):
            return {k: anchor(v) if k in ("source", "target") else v for k, v in value.items()}
        return value

    for role in ("train", "valid", "test"):
        if role in files:
            files[role] = anchor(files[role])
    policy = raw.get("policy")
    folder = policy.get("pretrained_path") if isinstance(policy, dict) else None
    if isinstance(folder, str) and not Path(folder).is_absolute() and (here / folder).exists():
        policy["pretrained_path"] = str(here / folder)  # a local folder beside the spec (else a hub name)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        deep = isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _REPLACED_WHOLE
        out[k] = _merge(out[k], v) if deep else v
    return out


def _with_parent(path: Path, raw: dict) -> dict:
    """A branch spec completed with its parent's settings (the branch's own fields win)."""
    branch = raw["branch"]
    parent_name = branch.get("from") if isinstance(branch, dict) else None
    if not isinstance(parent_name, str):
        raise SpecError(f"{path}: field 'branch.from' must name the parent experiment")
    inherited = [k for k in BRANCH_INHERITED if k in raw]
    if inherited:
        raise SpecError(
            f"{path}: field '{inherited[0]}': a branch reuses its parent's {', '.join(inherited)} "
            f"(from '{parent_name}'); it may set improve, grow, automation and description"
        )
    if parent_name == raw["name"]:
        raise SpecError(f"{path}: field 'branch.from': an experiment cannot branch from itself")
    try:
        parent_path = find_spec(parent_name)
    except SpecError as e:
        raise SpecError(f"{path}: field 'branch.from': {e}") from None
    # Looked at before the parent is resolved: two specs that branch from each other never recurse.
    try:
        parent_raw = yaml.load(parent_path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # noqa: S506
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: field 'branch.from': the parent spec {parent_path} cannot be read: {e}") from None
    grand = parent_raw.get("branch") if isinstance(parent_raw, dict) else None
    if grand is not None:
        chain = f"{raw['name']} → {parent_name} → {grand.get('from') if isinstance(grand, dict) else grand}"
        raise SpecError(
            f"{path}: field 'branch.from': '{parent_name}' is itself a branch ({chain}); branch from its parent"
        )
    parent = load_spec(parent_path)
    merged = _merge(parent.model_dump(mode="json", by_alias=True, exclude={"name", "description"}), raw)
    at = str(branch.get("at", ""))
    if at.startswith("grow_") and at[5:].isdigit():
        g = int(at[5:])
        if g > parent.improve.grows:
            raise SpecError(f"{path}: field 'branch.at': '{parent_name}' has only {parent.improve.grows} grows")
        if g > merged["improve"]["grows"]:
            raise SpecError(f"{path}: field 'improve.grows' must be at least {g} (the branch's steps start in {at})")
        steps = len(merged["improve"]["filter"]["values"])
        if g >= 2 and steps != parent.improve.steps:
            # Every grow has the same number of steps (core/improve/chain.py), so the parent's grows 1..g-1
            # are read with the branch's count: another count would name steps the parent never trained.
            raise SpecError(
                f"{path}: field 'improve.filter.values': a branch at {at} reuses the Improve steps of "
                f"'{parent_name}' grows 1-{g - 1}, which have {parent.improve.steps} step(s) each; it has {steps}"
            )
    return merged


def spec_dirs() -> list[Path]:
    """Where experiment specs live: the packaged ones plus REST_EXPERIMENTS_DIR, if set."""
    import os

    dirs = [SPEC_DIR]
    extra = os.environ.get("REST_EXPERIMENTS_DIR")
    if extra:
        dirs.append(Path(extra))
    return dirs


def find_spec(name_or_path: str) -> Path:
    """A spec file by path or name; REST_EXPERIMENTS_DIR wins over the packaged specs (everywhere)."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} and p.exists():
        return p
    for d in reversed(spec_dirs()):
        cand = d / f"{name_or_path}.yaml"
        if cand.exists():
            return cand
    known = sorted({q.stem for d in spec_dirs() for q in d.glob("*.yaml")})
    raise SpecError(f"unknown experiment '{name_or_path}'; known: {', '.join(known)}")


def all_specs(
    errors: list[SpecError] | None = None, check: Callable[[ExperimentSpec, Path], object] | None = None
) -> list[ExperimentSpec]:
    """Every experiment, resolved as `find_spec` resolves names, each passed to `check` (which raises
    SpecError) when given. A file that does not validate is left out (and reported in `errors`, when
    given) instead of hiding every other experiment."""
    names = sorted({q.stem for d in spec_dirs() for q in d.glob("*.yaml")})
    specs = []
    for name in names:
        try:
            path = find_spec(name)
            spec = load_spec(path)
            if check is not None:
                check(spec, path)
            specs.append(spec)
        except SpecError as e:
            if errors is None:
                warnings.warn(str(e), stacklevel=2)
            else:
                errors.append(e)
    return specs
