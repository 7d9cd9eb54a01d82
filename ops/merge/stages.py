"""Multi-document recipes (mergekit-multi): stages whose outputs later stages merge.

    name: chat-blend            # a stage; later documents use "chat-blend" as a model
    merge_method: slerp
    ...
    ---
    merge_method: ties          # the final stage (unnamed, or the one no other stage uses): -o OUT
    models: [{model: chat-blend, ...}, ...]

Checked before any tensor is read: every stage parses and names a known method with known parameters;
stage names are unique; exactly one stage is the final one; no stage depends on itself through others
(the cycle is named); a model that is neither a stage nor an existing folder nor a Hub id
(``org/name``) is reported as a missing stage; every stage whose inputs already exist is fully planned
(shapes, parameters, tokenizers). Stages then run in dependency order, each planned in full (its
inputs now exist) right before it runs, into a temporary folder beside the output (or
``intermediate_dir``, kept, where an already merged stage is reused as mergekit-multi does); the
temporary stages are removed at the end, and nothing is written to the output unless every stage ran.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from types import MappingProxyType

from modelsurgeon.ops.core.errors import PlanError, SurgeonError
from modelsurgeon.ops.core.problems import Problems
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.io.output import Output
from modelsurgeon.recipes.merge import MergeConfig, MergeRecipe, ModelRef

from .methods import get_method
from .params import check_param_names


def count_documents(path: str | Path) -> int:
    import yaml

    try:
        return sum(1 for d in yaml.compose_all(Path(path).read_text(), Loader=yaml.SafeLoader) if d is not None)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return 1  # the single-recipe reader reports it


def _refs(r: MergeRecipe) -> list[ModelRef]:
    return r.referenced_models()


def order_stages(stages: list[MergeRecipe], problems: Problems) -> tuple[list[int], int | None]:
    """(the order to run the stages in, the final stage), problems for names, cycles and missing stages."""
    names: dict[str, int] = {}
    for i, s in enumerate(stages):
        if s.name is None:
            continue
        if s.name in names:
            problems.add(f"stage name {s.name!r} is used by documents {names[s.name] + 1} and {i + 1}; names must be unique")
        names[s.name] = i
    deps = {
        i: sorted({names[ref.model] for ref in _refs(s) if ref.model in names and not ref.lora}) for i, s in enumerate(stages)
    }
    for i, s in enumerate(stages):
        for ref in _refs(s):
            m = ref.model
            if m in names or Path(m).expanduser().exists() or ("/" in m and not m.startswith((".", "/"))):
                continue
            problems.add(
                f"document {i + 1} ({s.name or 'final'}) uses {m!r}, which names no stage (stages: {', '.join(names) or 'none'}) "
                "and no existing model; fix the name or add the stage"
            )
    unnamed = [i for i, s in enumerate(stages) if s.name is None]
    used = {d for ds in deps.values() for d in ds}
    final = None
    if len(unnamed) > 1:
        problems.add(
            f"documents {', '.join(str(i + 1) for i in unnamed)} have no name; every stage but the final one needs name:"
        )
    elif unnamed:
        final = unnamed[0]
        if final in used:
            problems.add("the unnamed (final) stage cannot be used by another stage")
    else:
        sinks = [i for i in range(len(stages)) if i not in used]
        if len(sinks) == 1:
            final = sinks[0]
        elif sinks:
            problems.add(
                f"stages {', '.join(stages[i].name for i in sinks)} are used by no other stage; only one may be the final output "
                "(leave its name out, or use the others)"
            )
    order: list[int] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def visit(i: int, path: list[int]) -> None:
        if state.get(i) == 2:
            return
        if state.get(i) == 1:
            cyc = path[path.index(i) :] + [i]
            problems.add("the stages form a cycle: " + " -> ".join(stages[j].name or "final" for j in cyc))
            return
        state[i] = 1
        for d in deps[i]:
            visit(d, path + [i])
        state[i] = 2
        order.append(i)

    for i in range(len(stages)):
        visit(i, [])
    return order, final


def merge_stages(
    path: str | Path,
    output: str | Path | None,
    *,
    settings: dict,
    dry_run: bool = False,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    intermediate_dir: str | Path | None = None,
    progress: Progress = SILENT,
    command: str = "surgeon merge",
):
    """Check every stage of a multi-document recipe, then run them in order; the final stage's result
    (its ``stages`` lists the stages run before it)."""
    from modelsurgeon.recipes.mergekit import parse_stages

    from .plan import plan_merge
    from .run import run_merge

    text = Path(path).read_text()
    stages = parse_stages(text, str(path))
    problems = Problems("the multi-stage recipe")
    order, final = order_stages(stages, problems)
    warnings: list[str] = []
    for i, s in enumerate(stages):
        try:
            method = get_method(s.merge_method)
        except SurgeonError as e:
            problems.add(f"document {i + 1} ({s.name or 'final'}): {e.message}")
            continue
        check_param_names(s, method, problems, warnings)
    configs = {i: MergeConfig.build(s, **settings) for i, s in enumerate(stages)}
    out = Output.of(output, force, max_shard_size) if output is not None else None
    if out is not None:
        try:
            out.check()
        except SurgeonError as e:
            problems.add(str(e))
    names = {s.name for s in stages if s.name}
    if not problems:  # stages whose inputs all exist: planned in full now
        for i in order:
            if any(ref.model in names for ref in _refs(stages[i])):
                continue
            try:
                with plan_merge(configs[i]):
                    pass
            except PlanError as e:
                problems.extend([f"document {i + 1} ({stages[i].name or 'final'}): {p}" for p in e.problems])
            except SurgeonError as e:
                problems.add(f"document {i + 1} ({stages[i].name or 'final'}): {e}")
    if problems:
        raise PlanError(problems.lines(), problems.what)
    if dry_run:
        first = next(i for i in order if not any(ref.model in names for ref in _refs(stages[i])))
        with plan_merge(configs[first]) as plan:
            res = plan.result(None if output is None else str(output))
        return dataclasses.replace(res, stages=[stages[i].name or "final" for i in order], warnings=warnings + res.warnings)
    keep = intermediate_dir is not None
    parent = Path(output).expanduser().resolve().parent
    work = Path(intermediate_dir) if keep else Path(tempfile.mkdtemp(prefix=f".{Path(output).name}.stages-", dir=parent))
    work.mkdir(parents=True, exist_ok=True)
    try:
        where = {s.name: str(work / s.name) for s in stages if s.name}
        result = None
        for i in order:
            recipe = _patched(stages[i], where)
            cfg = configs[i].replace(recipe=recipe)
            if i == final:
                target = out
            else:
                dest = work / stages[i].name
                if keep and (dest / "config.json").is_file() and any(dest.glob("*.safetensors")):
                    progress.note(f"stage {stages[i].name}: {dest} exists, reused")
                    continue
                target = Output.of(dest, True, max_shard_size)
            with plan_merge(cfg, target) as plan:
                for w in plan.warnings:
                    progress.note(f"warning: {w}")
                r = run_merge(plan, progress, command)
            if i == final:
                result = r
        return dataclasses.replace(result, stages=[stages[i].name or "final" for i in order])
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _patched(r: MergeRecipe, where: dict[str, str]) -> MergeRecipe:
    """The recipe with stage names replaced by the stages' output folders."""

    def ref(m: ModelRef | None) -> ModelRef | None:
        if m is None or m.model not in where:
            return m
        return dataclasses.replace(m, model=where[m.model])

    def inp(mi):
        return dataclasses.replace(mi, model=ref(mi.model))

    def models(ms):
        return None if ms is None else tuple(inp(m) for m in ms)

    def slices(ss):
        if ss is None:
            return None
        return tuple(dataclasses.replace(s, base_model=ref(s.base_model), sources=tuple(inp(x) for x in s.sources)) for s in ss)

    return dataclasses.replace(
        r,
        base_model=ref(r.base_model),
        models=models(r.models),
        slices=slices(r.slices),
        modules=None
        if r.modules is None
        else MappingProxyType(
            {k: dataclasses.replace(m, models=models(m.models), slices=slices(m.slices)) for k, m in r.modules.items()}
        ),
        tokenizer_source=where.get(r.tokenizer_source, r.tokenizer_source) if r.tokenizer_source else None,
    )
