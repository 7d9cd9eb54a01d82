"""The flag form of a merge (``--method ties --base B A C --density 0.5``) as a ``MergeRecipe``.

The method is looked up first (a misspelt name is a usage error naming the known ones, before any model
is opened). ``--weight`` and ``--density`` are given once for every model or once per merged model, in
order (the base, also listed among the models, is not merged and takes none, unless the method does not
use a base); a method whose weight is required gets weight 1 for every model unless told otherwise;
``--t`` and every ``--param KEY=VALUE`` (the value read as YAML) are global parameters. The recipe this
gives is what is written beside the output as mergekit_config.yml.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.recipes.merge import MergeRecipe, ModelInput, ModelRef

from .methods import get_method


def recipe_from_flags(
    method: str,
    models: Sequence[str],
    base: str | None = None,
    weight: Sequence[float] | None = None,
    density: Sequence[float] | None = None,
    t: float | None = None,
    params: Sequence[str] | None = None,
) -> MergeRecipe:
    """The recipe the flags describe; a usage error (exit 2) for anything the flags get wrong."""
    try:
        meth = get_method(method)
    except SurgeonError as e:
        raise UsageError(e.message, e.hint) from None
    if not models:
        raise UsageError(
            f"--method {method} needs the models to merge", f"e.g. surgeon merge --method {method} --base B A C -o OUT"
        )
    base_ref = ModelRef.parse(base) if base else None
    # the models merged besides the base; the base may also be listed among them
    merged = [meth.base in ("unused", "joins") or base_ref is None or not ModelRef.parse(m).same_as(base_ref) for m in models]
    n_merged = sum(merged)
    global_params: dict = {}
    per_model: list[dict] = [{} for _ in models]
    for flag, values, name in (("--weight", weight, "weight"), ("--density", density, "density")):
        if not values:
            continue
        if len(values) == 1:
            global_params[name] = values[0]
        elif len(values) == n_merged:
            chosen = iter(values)
            for i in (i for i, m in enumerate(merged) if m):
                per_model[i][name] = next(chosen)
        else:
            raise UsageError(
                f"{flag} was given {len(values)} times for {n_merged} model(s)",
                f"give it once for all, or once per model ({n_merged})",
            )
    w = meth.param("weight")
    if not weight and w is not None and w.required:
        global_params["weight"] = 1.0  # flag form: equal weights unless told otherwise
    if t is not None:
        global_params["t"] = t
    global_params.update(parse_params(params or ()))
    return MergeRecipe(
        merge_method=method,
        base_model=base_ref,
        models=tuple(ModelInput(ModelRef.parse(m), MappingProxyType(p)) for m, p in zip(models, per_model)),
        parameters=MappingProxyType(global_params),
        source="flags",
    )


def parse_params(items: Sequence[str]) -> dict:
    """``--param KEY=VALUE`` items as {key: value}, each value read as YAML (``normalize=false``)."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r} is not KEY=VALUE", "e.g. --param lambda=0.8")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UsageError(f"--param {item!r}: cannot read the value") from None
    return out
