"""The subspace file: theta_d of one trained run with everything needed to rebuild theta_0 and P, and back
to the full weights (``surgeon expand-subspace``).

A subspace file is a safetensors file holding ``theta_d`` (d - m numbers), ``said_scales`` (m, with SAID) and
``init.NAME`` for each tensor of a new head (its theta_0 is in no checkpoint); its metadata key
``modelsurgeon.subspace`` holds a JSON record: d, the seeds, the projection's settings, the parameter
layout, where theta_0 comes from (``source``) and the sha256 of theta_0 and of the trained weights, so an
expansion on another machine is checked bit for bit (or to float rounding, and said so).

    rebuilt = rebuild(path, base, device)    # the model and theta_0, checked against the record
    expanded = expand(rebuilt)               # theta_0 + P theta_d, checked against the trained weights
    expanded_state(expanded)                 # the full state dict, tied weights once
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from modelsurgeon.ops.core.errors import SurgeonError

from .problem import Problem
from .projections import make_projection
from .train import FWHT_FLAG, Run, build_projection

FORMAT = "modelsurgeon.subspace"
FORMAT_VERSION = 1


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# writing


def subspace_record(problem: Problem, cfg, run: Run, theta0: torch.Tensor, flat: torch.Tensor, extra: dict) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "torch": torch.__version__,
        "d": run.d,
        "seed": run.seed,
        "proj_seed": cfg.proj_seed + run.seed,
        "init_seed": cfg.init_seed + run.seed,
        "projection": run.projection,
        "said": problem.said,
        "fwht": cfg.fwht,
        "include": problem.include,
        "exclude": problem.exclude,
        "layout": problem.layout(),
        "head": problem.built.head,
        "source": problem.built.source,
        "theta0_sha256": sha256_tensor(theta0),
        "weights_sha256": sha256_tensor(flat),
        "weights_norm": float(flat.double().norm()),
        **extra,
    }


def trained_flat(problem: Problem, cfg, run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta_0, theta_0 + P theta_d) of a finished run, recomputed exactly as in training."""
    theta0 = problem.theta0(run.seed, cfg.init_seed)
    proj = build_projection(problem, cfg, run.d, run.seed)  # type: ignore[arg-type]
    with torch.no_grad():
        flat = problem.flat(
            theta0, proj(run.theta_d.to(problem.device)), None if run.scales is None else run.scales.to(problem.device)
        )
    return theta0, flat


def save_subspace(
    path: str | Path, problem: Problem, cfg, run: Run, extra: dict, command: str, force: bool = False, inputs=()
) -> dict:
    """Write the subspace file of ``run`` atomically (a temporary file renamed into place); its record."""
    from safetensors.torch import save

    from modelsurgeon.ops.io.output import OutputFile
    from modelsurgeon.ops.io.writer import provenance

    theta0, flat = trained_flat(problem, cfg, run)
    rec = subspace_record(problem, cfg, run, theta0, flat, extra)
    tensors = {"theta_d": run.theta_d.float().contiguous()}
    if run.scales is not None:
        tensors["said_scales"] = run.scales.float().contiguous()
    params = dict(problem.module.named_parameters())
    for name in problem.built.head:  # a new head's theta_0 is not in any checkpoint: keep it (it is small)
        tensors[f"init.{name}"] = params[name].detach().cpu().float().contiguous()
    rec["tensors_sha256"] = {k: sha256_tensor(v) for k, v in tensors.items()}  # every stored value, checked on reading
    meta = provenance(command, {FORMAT: json.dumps(rec, separators=(",", ":"))})
    with OutputFile(path, force, inputs) as out:
        out.path.write_bytes(save(tensors, metadata=meta))  # small; a plain write reports a full disk as OSError
        out.commit()
    return rec


# --------------------------------------------------------------------------------------------
# reading and expanding


def _check_record(rec, p: Path) -> None:
    """The fields expand reads, with their types, so a damaged or crafted record is one line."""

    def bad(what: str):
        raise SurgeonError(f"{p}: its subspace record is malformed ({what})", "use the file as --save-subspace wrote it")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(rec, dict):
        bad("not a JSON object")
    for key, kind in (("source", dict), ("layout", list), ("projection", dict), ("theta0_sha256", str), ("weights_sha256", str)):
        if not isinstance(rec.get(key), kind):
            bad(f"{key} missing or not a {kind.__name__}")
    if not isinstance(rec["source"].get("kind"), str):
        bad("source.kind")
    for key in ("d", "init_seed"):
        if not is_int(rec.get(key)) or rec[key] < 0:
            bad(key)
    if not isinstance(rec.get("weights_norm"), (int, float)) or isinstance(rec.get("weights_norm"), bool):
        bad("weights_norm")
    pset = rec["projection"]
    if pset.get("kind") not in ("dense", "sparse", "fastfood") or not is_int(pset.get("d")) or not is_int(pset.get("seed")):
        bad("projection kind, d or seed")
    if pset["d"] < 1 or pset["seed"] < 0:
        bad("projection d or seed out of range")
    for entry in rec["layout"]:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], list)
            and all(is_int(s) and 0 <= s < 2**40 for s in entry[1])
        ):
            bad(f"layout entry {str(entry)[:60]}")
    if rec.get("fwht", "auto") not in FWHT_FLAG:
        bad("fwht")
    head = rec.get("head") or []
    if not isinstance(head, list) or not all(isinstance(h, str) for h in head):
        bad("head")
    for key in ("include", "exclude"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            bad(key)


def read_subspace(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    from modelsurgeon.ops.io.checkpoint import read_safetensors_header

    p = Path(path)
    if not p.is_file():
        raise SurgeonError(f"no such subspace file: {p}")
    _, meta = read_safetensors_header(p)
    raw = meta.get(FORMAT)
    if raw is None:
        raise SurgeonError(
            f"{p} is a safetensors file but not a subspace file",
            "write one with `surgeon intrinsic-dim ... --save-subspace FILE`",
        )
    try:
        rec = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise SurgeonError(f"{p}: its subspace record is not valid JSON") from None
    if not isinstance(rec, dict):
        raise SurgeonError(f"{p}: its subspace record is not a JSON object")
    if rec.get("version") != FORMAT_VERSION:
        raise SurgeonError(
            f"{p} is subspace format version {rec.get('version')}; this modelsurgeon reads version {FORMAT_VERSION}"
        )
    _check_record(rec, p)
    with safe_open(str(p), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "theta_d" not in tensors:
        raise SurgeonError(f"{p} has no theta_d tensor")
    hashes = rec.get("tensors_sha256")
    if not isinstance(hashes, dict) or set(hashes) != set(tensors):
        raise SurgeonError(
            f"{p} does not record the sha256 of each of its tensors, so its values cannot be checked",
            "write it again with `surgeon intrinsic-dim ... --save-subspace FILE`",
        )
    changed = [k for k, t in tensors.items() if sha256_tensor(t) != hashes[k]]
    if changed:
        raise SurgeonError(
            f"{p}: the values of {', '.join(changed)} differ from the ones it was written with (sha256); the file was changed",
            "use the file as --save-subspace wrote it",
        )
    return rec, tensors


@dataclass
class Rebuilt:
    """A subspace file's model with theta_0 in place, checked against the file's record."""

    path: str
    problem: Problem
    rec: dict
    tensors: dict[str, torch.Tensor]
    theta0: torch.Tensor
    checkpoint: object | None  # the base checkpoint (config and tokenizer files come from it), or None

    def close(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.close()


@dataclass
class Expanded:
    problem: Problem
    rec: dict
    flat: torch.Tensor
    exact: bool
    checkpoint: object | None


def rebuild(path: str | Path, base: str | None = None, device: str | torch.device = "cpu", task: str | None = None) -> Rebuilt:
    """The model of a subspace file with its theta_0 (from its seeds, or the base checkpoint, found by the
    recorded path or ``base`` and checked by sha256); refuses a layout or a theta_0 that differs. A model
    that came from a ``module:`` task is Python code: it is built only from ``task``, which the user names
    (never from the file)."""
    from .models import BuiltModel

    rec, tensors = read_subspace(path)
    src = rec["source"]
    load = MODEL_SOURCES.get(src["kind"])
    if load is None:
        raise SurgeonError(f"{path}: unknown model source {src['kind']!r}")
    check_memory(rec, str(path))
    try:
        module, ck = load(src, rec, tensors, base, str(path), task)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise SurgeonError(f"{path}: its subspace record is malformed ({type(e).__name__}: {e})") from None
    try:
        built = BuiltModel(module, src, None, head=rec.get("head") or [])
        problem = Problem(built, None, device, rec.get("include"), rec.get("exclude"), bool(rec.get("said")))
        if problem.layout() != rec["layout"]:
            diff = next((a, b) for a, b in zip(problem.layout() + [None], rec["layout"] + [None]) if a != b)
            raise SurgeonError(
                f"the rebuilt model's parameters differ from the subspace's layout (first difference: {diff[0]} vs {diff[1]})"
            )
        theta0 = problem.theta0(0, 0, reinit=False)
        if sha256_tensor(theta0) != rec["theta0_sha256"]:
            raise SurgeonError(
                f"theta_0 rebuilt for {path} differs from the one it was trained from (sha256)",
                f"it was written with torch {rec.get('torch')}; this is torch {torch.__version__}"
                if rec.get("torch") != torch.__version__
                else "pass --base with the original checkpoint",
            )
    except BaseException:
        if ck is not None:
            ck.close()
        raise
    return Rebuilt(str(path), problem, rec, tensors, theta0, ck)


# each model source (``BuiltModel.source["kind"]``) -> (module with theta_0 in place, base checkpoint or None)


def _arch_module(src: dict, rec: dict, tensors: dict, base: str | None, path: str, task: str | None):
    from .models import build_arch, he_init

    with torch.device("meta"):  # count the parameters before allocating them
        n = sum(p.numel() for p in build_arch(src).parameters())
    if n != layout_numel(rec["layout"]):
        raise SurgeonError(
            f"{path}: the recorded architecture has {n:,} parameters but its layout {layout_numel(rec['layout']):,}"
        )
    module = build_arch(src)
    he_init(module, rec["init_seed"])
    return module, None


def _toy_module(src: dict, rec: dict, tensors: dict, base: str | None, path: str, task: str | None):
    from .models import Toy, toy_init

    module = Toy()
    toy_init(module, rec["init_seed"])
    return module, None


def _checkpoint_module(src: dict, rec: dict, tensors: dict, base: str | None, path: str, task: str | None):
    from .models import load_transformers

    auto_class, kwargs = src["auto_class"], src.get("kwargs") or {}
    if auto_class not in _AUTO_CLASSES or not isinstance(kwargs, dict) or set(kwargs) - _AUTO_KWARGS:
        raise SurgeonError(f"{path}: its record names a model class or settings intrinsic-dim never writes ({auto_class!r})")
    ck = _open_base(src, base)
    try:
        module = load_transformers(ck, auto_class, kwargs).module
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name in rec.get("head") or []:
                t = tensors.get(f"init.{name}")
                if t is None or name not in params or tuple(t.shape) != tuple(params[name].shape):
                    raise SurgeonError(
                        f"{path}: the initial value of the new head tensor {name} is missing or has the wrong shape"
                    )
                params[name].copy_(t)
    except BaseException:
        ck.close()
        raise
    return module, ck


def _user_module(src: dict, rec: dict, tensors: dict, base: str | None, path: str, task: str | None):
    from .models import load_state_strict
    from .tasks import load_task, task_kind

    recorded = str(src["task"])
    if task is None:
        raise SurgeonError(
            f"{path} was trained with the model of the Python task {recorded}; modelsurgeon runs code only when "
            "you name it on the command line",
            f"if you trust that code, pass --task {recorded}",
        )
    if task_kind(task).name != "module":
        raise SurgeonError(f"--task {task} is not a module:function task, which {path} needs (it recorded {recorded})")
    module = load_task(task).user_model
    if not src.get("checkpoint"):
        return module, None
    ck = _open_base(src["checkpoint"], base)
    try:
        load_state_strict(module, ck)
    except BaseException:
        ck.close()
        raise
    return module, ck


MODEL_SOURCES = {"arch": _arch_module, "toy": _toy_module, "checkpoint": _checkpoint_module, "module": _user_module}
_AUTO_CLASSES = {"AutoModel", "AutoModelForSequenceClassification", "AutoModelForCausalLM"}
_AUTO_KWARGS = {"num_labels", "problem_type", "id2label", "label2id"}


def layout_numel(layout: list) -> int:
    return sum(math.prod(shape) for _, shape in layout)


def check_memory(rec: dict, path: str) -> None:
    """Refuse, before anything is allocated, a record whose D (and projection) would not fit in memory."""
    from modelsurgeon.ops.core.memory import available_bytes
    from modelsurgeon.ops.core.units import fmt_bytes

    from .projections import estimate_bytes

    D = layout_numel(rec["layout"])
    pset = rec["projection"]
    need = 16 * D + estimate_bytes(pset["kind"], D, pset["d"])
    free = available_bytes()
    if free is not None and need > free:
        raise SurgeonError(
            f"{path}: expanding D = {D:,} parameters from d = {pset['d']:,} needs about {fmt_bytes(need)} of memory "
            f"and {fmt_bytes(free)} is free",
            "expand it on a machine with more memory",
        )


def expand(rebuilt: Rebuilt) -> Expanded:
    """theta_0 + P theta_d in the model's layout, P regenerated from its seed; bit-exact when the trained
    weights' sha256 matches, else refused unless their norm agrees to 1e-5 (another device or FWHT path)."""
    path, problem, rec, tensors = rebuilt.path, rebuilt.problem, rebuilt.rec, rebuilt.tensors
    pset = rec["projection"]
    theta_d = tensors["theta_d"].float()
    if theta_d.numel() != pset["d"]:
        raise SurgeonError(f"{path}: theta_d has {theta_d.numel()} numbers but its projection says d = {pset['d']}")
    proj = make_projection(
        pset["kind"],
        problem.D,
        pset["d"],
        pset["seed"],
        problem.device,
        max_bytes=1 << 62,
        use_triton=FWHT_FLAG[rec.get("fwht", "auto")],
    )
    scales = tensors.get("said_scales")
    with torch.no_grad():
        flat = problem.flat(
            rebuilt.theta0, proj(theta_d.to(problem.device)), None if scales is None else scales.float().to(problem.device)
        )
    exact = sha256_tensor(flat) == rec["weights_sha256"]
    if not exact:
        rel = abs(float(flat.double().norm()) - rec["weights_norm"]) / max(rec["weights_norm"], 1e-30)
        if rel > 1e-5:
            raise SurgeonError(
                f"the projection regenerated for {path} differs from the one used in training (norm off by {rel:.2e})",
                f"it was written with torch {rec.get('torch')}; this is torch {torch.__version__}",
            )
    return Expanded(problem, rec, flat.cpu(), exact, rebuilt.checkpoint)


def _open_base(src: dict, base: str | None):
    from modelsurgeon.ops.io.checkpoint import open_checkpoint

    from .models import sha256_file

    where = base or src["path"]
    try:
        ck = open_checkpoint(where)
    except SurgeonError as e:
        raise SurgeonError(
            f"cannot open the base checkpoint {where} ({e.message})",
            "pass --base with the checkpoint the subspace was trained from",
        ) from None
    have = {f.name: sha256_file(f) for f in ck.weight_files}
    if have != src["files"]:
        ck.close()
        raise SurgeonError(
            f"{where} is not the checkpoint the subspace was trained from (sha256 of its weight files differs)",
            "pass --base with the original checkpoint",
        )
    return ck


def expanded_state(ex: Expanded) -> list[tuple[str, torch.Tensor]]:
    """The full state dict of the trained model: subspace parameters from ``flat``, the rest as loaded."""
    p = ex.problem
    trained = {n: ex.flat[o : o + k].view(s) for n, o, k, s in zip(p.names, p.offsets, p.numels, p.shapes)}
    out, seen = [], set()
    for name, t in p.module.state_dict(keep_vars=True).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:  # tied weights are written once, as transformers does
            continue
        seen.add(key)
        out.append((name, trained[name] if name in trained else t.detach().cpu()))
    return out
