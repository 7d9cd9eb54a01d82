"""Running a merge plan: stream tensor by tensor into the output folder, beside its config, tokenizer,
recipe and model card.

    with plan_merge(cfg, Output.of("out/")) as plan:
        result = run_merge(plan, progress)      # result.to_dict(): what `surgeon merge --json` prints

The inputs' versions of one tensor are read on a thread, one tensor ahead (within 1.5x the largest
tensor's bytes); they are merged in float32 on the plan's device, cast to the output dtype and handed to
the sharded writer, which appends each to the current shard. Peak memory is a few times the inputs'
versions of the largest tensor, whatever the model size.

Threads (``ops.core.streaming.cpu_threads``): the merging thread gets the policy's intra-op threads (for
whole-tensor methods such as slerp), and the streamed methods split each tensor into chunks that run on
the shared worker pool, as many workers as that, one intra-op thread each; reading and writing run on
their own threads. On 2 cores the policy leaves one: the chunks run on the merging thread (two chunk
workers beside the reader and the writer measured 2-6x slower on a busy 2-core machine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator

import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.progress import SILENT, Progress
from modelsurgeon.ops.core.streaming import cpu_threads, prefetched
from modelsurgeon.ops.io.checkpoint import TOKENIZER_FILES
from modelsurgeon.ops.io.output import write_folder

from . import sparsify
from .jobs import Job
from .methods import MergeInputs
from .modules import config_set
from .plan import MergePlan, MergeResult


def tensor_seed(seed: int, tensor: str, model: int, block: int = 0) -> int:
    """A seed that depends only on (--seed, tensor name, model position, block of draws): independent of
    the order tensors are processed in and of the device the math runs on."""
    h = hashlib.sha256(f"{seed}\0{tensor}\0{model}\0{block}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _cast_changes_math(src: torch.dtype, to: torch.dtype) -> bool:
    """Whether casting inputs to ``to`` before float32 math changes anything (widening half to float32 does not)."""
    if not src.is_floating_point or src == to:
        return False
    return not (to == torch.float32 and src in (torch.float16, torch.bfloat16))


def compute_job(plan: MergePlan, job: Job, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Merge one tensor's versions (base first when the job has one) into the output dtype, on the CPU."""
    if job.copy:
        x = tensors[0]
        return x if x.dtype == job.dtype else x.to(job.dtype)
    dev = plan.device
    cd = plan.compute_dtype
    xs = []
    for x in tensors:
        if cd is not None and _cast_changes_math(x.dtype, cd):
            x = x.to(cd)  # mergekit's `dtype`: inputs are cast before merging
        xs.append(x.to(dev, non_blocking=True) if dev.type != "cpu" else x)
    tensors.clear()
    if job.row_maps is not None:
        from .vocab import align_rows

        xs = align_rows(xs, job.row_maps, 0 if job.base is not None else None)
    if job.vocab is not None:
        xs = [x.to(dev) for x in job.vocab.apply([x.cpu() for x in xs])]
    base = xs.pop(0) if job.base is not None else None
    seed = plan.seed
    inp = MergeInputs(
        job.name,
        xs,
        base,
        job.params,
        job.model_params,
        generator=lambda i, block=0: torch.Generator().manual_seed(tensor_seed(seed, job.name, i, block)),
        out_dtype=job.dtype,
        chunk=sparsify.CHUNK if dev.type == "cpu" else 1 << 26,
    )
    out = plan.method.fn(inp)
    del inp, xs, base
    if out.is_floating_point() and out.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(out))).all()):
        # (aminmax propagates NaN and shows inf; isfinite over the whole tensor is ~25x slower on the CPU)
        raise SurgeonError(
            f"the merge produced NaN or infinite values in {job.name}",
            "check the weights and the inputs (`surgeon report` each model); nothing was written",
        )
    return out.to(job.dtype).to("cpu")


def _merged(plan: MergePlan, progress: Progress, threads: int):
    """(name, merged tensor) for every job in order; the inputs are read one job ahead on a thread.

    Runs on its own thread with ``threads`` intra-op threads. torch applies a thread's count at that
    thread's first operation, from the last count set by any thread, so it is pinned here, before the
    reader thread sets its own 1 (unpinned, the merge ran on one thread whatever the machine)."""
    torch.set_num_threads(threads)
    torch.get_num_threads()  # applies it to this thread now
    jobs = plan.jobs
    costs = [plan.input_bytes(j) for j in jobs]
    budget = 1.5 * max(costs, default=0)

    def read(job: Job):
        return job, [plan.models.ck(s.model).get(s.name) for s in job.sources]

    for job, tensors in prefetched((read(j) for j in jobs), depth=1, costs=costs, budget=budget, worker_threads=1):
        nbytes = sum(t.nbytes for t in tensors)
        out = compute_job(plan, job, tensors)
        progress.advance(nbytes)
        yield job.name, out


def run_merge(plan: MergePlan, progress: Progress = SILENT, command: str = "surgeon merge") -> MergeResult:
    """Stream every job through the method into the output folder (atomic); close the inputs."""
    if plan.output is None:
        raise SurgeonError("this merge plan has no output", "plan it with an output folder to run it")
    t0 = time.perf_counter()
    planned = plan.result()
    progress.start(f"merge ({plan.method.name})", sum(plan.input_bytes(j) for j in plan.jobs), "bytes")
    try:
        with cpu_threads() as threads:
            target = write_folder(
                plan.output,
                plan.specs(),
                prefetched(_merged(plan, progress, threads), depth=1),
                source=None,
                command=command,
                metadata={"merge_method": plan.method.name, "merge_seed": str(plan.seed)},
                extra_files=aux_files(plan),
            )
    finally:
        plan.close()
    return dataclasses.replace(
        planned,
        peak_memory_estimate=None,
        dry_run=False,
        output=str(target),
        files=sorted(p.name for p in target.iterdir()),
        bytes_written=planned.output_bytes,
        seconds=time.perf_counter() - t0,
    )


def aux_files(plan: MergePlan) -> dict[str, str | bytes]:
    """config.json from the config model (updated), tokenizer files from the tokenizer model, the recipe,
    and a model card."""
    cfg_ck = plan.models.ck(plan.layout.config_model)
    tok_ck = plan.models.ck(plan.layout.tokenizer_model)
    files: dict[str, str | bytes] = {}
    for ck, keep in ((cfg_ck, lambda rel: rel not in TOKENIZER_FILES), (tok_ck, lambda rel: rel in TOKENIZER_FILES)):
        for f in ck.aux_files():
            rel = f.relative_to(ck.folder).as_posix()
            if keep(rel):
                files[rel] = f.read_bytes()
    if cfg_ck.config is not None:
        cfg = dict(cfg_ck.config)
        for key, value in plan.layout.config_updates.items():
            config_set(cfg, key, value)
        dts = {j.dtype for j in plan.jobs if j.dtype.is_floating_point}
        if len(dts) == 1 and (plan.recipe.out_dtype or plan.recipe.dtype):
            name = str(next(iter(dts))).removeprefix("torch.")
            for key in ("torch_dtype", "dtype"):
                if key in cfg:
                    cfg[key] = name
        files["config.json"] = json.dumps(cfg, indent=2) + "\n"
    chat = plan.layout.chat_template
    if plan.layout.tokenizer is not None:
        files = {k: v for k, v in files.items() if k not in TOKENIZER_FILES}
        files.update(built_tokenizer_files(plan.layout.tokenizer, chat))
    elif chat:
        files["chat_template.jinja"] = chat
        if "tokenizer_config.json" in files:
            tc = json.loads(files["tokenizer_config.json"])
            if "chat_template" in tc:
                tc["chat_template"] = chat
                files["tokenizer_config.json"] = json.dumps(tc, indent=2) + "\n"
    recipe_text = plan.recipe.text if plan.recipe.text is not None else plan.recipe.to_yaml()
    files["mergekit_config.yml"] = recipe_text
    files["README.md"] = model_card(plan, recipe_text)
    return files


def built_tokenizer_files(tokenizer, chat_template: str | None) -> dict[str, bytes]:
    """The files transformers writes for a tokenizer built by the plan (union, added tokens)."""
    import tempfile
    from pathlib import Path

    if chat_template:
        tokenizer.chat_template = chat_template
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def model_card(plan: MergePlan, recipe_text: str) -> str:
    from modelsurgeon import __version__

    base = plan.recipe.base_model
    lines = ["---"]
    if base is not None:
        lines.append(f"base_model: {base.model}")
    lines += ["library_name: transformers", "tags:", "- merge", "- modelsurgeon", "---", "", "# Merged model", ""]
    lines.append(
        f"Made with modelsurgeon {__version__} (`surgeon merge`), method **{plan.method.name}** ({plan.method.paper}), seed {plan.seed}."
    )
    lines += ["", "Models:", ""] + [f"- {m.label}" for m in plan.models]
    lines += ["", "Recipe (also in mergekit_config.yml):", "", "```yaml", recipe_text.rstrip(), "```", ""]
    return "\n".join(lines)


def merged_tensors(plan: MergePlan) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, merged tensor) in the order of ``plan.specs()``, exactly what ``run_merge`` writes, for a caller
    that hands them on instead of writing them (``surgeon run`` fuses tensor-wise steps into one pass). Run it
    under ``cpu_threads()``; the inputs are read ahead and the merging runs on a thread, as in ``run_merge``."""
    yield from prefetched(_merged(plan, SILENT, torch.get_num_threads()), depth=1)
