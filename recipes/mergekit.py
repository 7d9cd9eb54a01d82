"""Reading mergekit's YAML into a ``MergeRecipe``, with the line and column of every complaint.

A recipe file is read exactly as mergekit writes it (``merge_method``, ``base_model``, ``models``,
``slices`` or ``modules``, ``parameters``, ``dtype``/``out_dtype``, ``tokenizer_source``, ...), so a mergekit config
runs unchanged. Unlike mergekit we refuse what we do not understand: an unknown key, a typo in a
structural key, a value of the wrong shape; every message carries the line and column of the offending
node, and every problem of a file is reported at once (a ``PlanError``). Whether the method exists and
which parameters it takes is checked against the method registry by the planner, before any model is
opened. Imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType

from modelsurgeon.ops.core.errors import PlanError, SurgeonError

from .base import did_you_mean
from .merge import (
    CHAT_TEMPLATES,
    DTYPES,
    NO_PARAMS,
    Condition,
    Conditions,
    Gradient,
    MergeRecipe,
    ModelInput,
    ModelRef,
    ModuleDef,
    Params,
    SliceDef,
    TokenSetting,
    TokenSource,
    is_template_name,
)

TOP_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "modules",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "name",
)
MODEL_KEYS = ("model", "parameters")
SOURCE_KEYS = ("model", "layer_range", "parameters")
SLICE_KEYS = ("sources", "base_model", "parameters", "residual_weight")
MODULE_KEYS = ("models", "slices", "parameters")
TOKENIZER_KEYS = ("source", "tokens", "pad_to_multiple_of")
TOKEN_KEYS = ("source", "force")
TOKEN_SOURCE_KEYS = ("kind", "model", "token", "token_id")
# mergekit keys we know but do not implement: a clear error beats a silent difference
UNSUPPORTED: dict[str, str] = {}


def load_recipe(path: str | Path) -> MergeRecipe:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SurgeonError(f"recipe {path} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SurgeonError(f"cannot read recipe {path}: {e}") from None
    return parse_recipe(text, str(path))


def parse_recipe(text: str, source: str = "<recipe>") -> MergeRecipe:
    """Parse mergekit YAML; raise one error (bad YAML) or a PlanError listing every problem."""
    import yaml

    try:
        docs = [d for d in yaml.compose_all(text, Loader=yaml.SafeLoader) if d is not None]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = (e.problem or e.context or "invalid YAML").strip()
        raise SurgeonError(f"{source} is not valid YAML{where}: {what}", "fix the recipe file") from None
    except yaml.YAMLError as e:
        raise SurgeonError(f"{source} is not valid YAML: {e}") from None
    if not docs:
        raise SurgeonError(f"{source} is empty", "write a merge recipe (merge_method, models, ...)")
    if len(docs) > 1:
        raise SurgeonError(
            f"{source} holds {len(docs)} YAML documents (stages)",
            "read it with parse_stages (surgeon merge runs every stage), or split the file",
        )
    r = _Reader(source)
    recipe = r.recipe(docs[0], text)
    if r.problems:
        raise PlanError(r.problems, f"the recipe {source}")
    return recipe


def parse_stages(text: str, source: str = "<recipe>") -> list[MergeRecipe]:
    """Every YAML document of a recipe file, in order (mergekit-multi): one recipe per stage, each named
    by ``name:`` when a later stage uses its output as a model. Every problem of every stage at once."""
    import yaml

    try:
        nodes = [d for d in yaml.compose_all(text, Loader=yaml.SafeLoader) if d is not None]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = (e.problem or e.context or "invalid YAML").strip()
        raise SurgeonError(f"{source} is not valid YAML{where}: {what}", "fix the recipe file") from None
    except yaml.YAMLError as e:
        raise SurgeonError(f"{source} is not valid YAML: {e}") from None
    if not nodes:
        raise SurgeonError(f"{source} is empty", "write a merge recipe (merge_method, models, ...)")
    problems: list[str] = []
    out = []
    for node in nodes:
        r = _Reader(source)
        try:
            rec = r.recipe(node, _document_text(text, node) if len(nodes) > 1 else text)
        except PlanError as e:
            problems += e.problems
            continue
        problems += r.problems
        out.append(rec)
    if problems:
        raise PlanError(problems, f"the recipe {source}")
    return out


def _document_text(text: str, node) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[node.start_mark.line : node.end_mark.line + (1 if node.end_mark.column else 0)])


class _Nodes:
    """Reading YAML nodes into values; each complaint is kept with its position, reading goes on."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []
        self.where: dict[str, str] = {}  # node path -> "line L, column C"

    def at(self, node) -> str:
        m = node.start_mark
        return f"line {m.line + 1}, column {m.column + 1}"

    def bad(self, node, path: str, msg: str) -> None:
        self.problems.append(f"{self.source} {self.at(node)}: {path}: {msg}" if path else f"{self.source} {self.at(node)}: {msg}")

    def mapping(self, node, path: str, known: tuple[str, ...]) -> dict | None:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            self.bad(node, path, f"expected a mapping (key: value), got {_kind(node)}")
            return None
        out: dict = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            kpath = f"{path}.{key}" if path else str(key)
            if key is None:
                self.bad(k, path, "keys must be plain names")
                continue
            if key in out:
                self.bad(k, kpath, "appears twice")
                continue
            if key not in known:
                if key in UNSUPPORTED:
                    self.bad(k, kpath, UNSUPPORTED[key])
                else:
                    self.bad(k, kpath, f"unknown key; known keys here: {', '.join(known)}" + did_you_mean(key, known))
                continue
            self.where[kpath] = self.at(v)
            out[key] = v
        return out

    def scalar(self, node, path: str):
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            self.bad(node, path, f"expected a single value, got {_kind(node)}")
            return None
        return _construct_scalar(node)

    def string(self, node, path: str) -> str | None:
        v = self.scalar(node, path)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            self.bad(node, path, f"expected text, got {v!r}")
            return None
        return str(v)

    def model_ref(self, node, path: str) -> ModelRef | None:
        s = self.string(node, path)
        if s is None:
            return None
        if not s.strip():
            self.bad(node, path, "is empty")
            return None
        return ModelRef.parse(s)

    def dtype(self, node, path: str) -> str | None:
        s = self.string(node, path)
        if s is None:
            return None
        if s.lower() not in DTYPES:
            self.bad(node, path, f"unknown dtype {s!r}; use one of float32, float16, bfloat16, float64")
            return None
        return DTYPES[s.lower()]


class _Settings(_Nodes):
    """Parameters: mappings of name -> setting (a scalar, a gradient, or conditions)."""

    def params(self, node, path: str) -> Params:
        import yaml

        if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
            return NO_PARAMS
        if not isinstance(node, yaml.MappingNode):
            self.bad(node, path, f"expected a mapping of parameter: value, got {_kind(node)}")
            return NO_PARAMS
        m = self.mapping(node, path, known=tuple(k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)))
        if m is None:
            return NO_PARAMS
        out = {}
        for key, v in m.items():
            s = self.setting(v, f"{path}.{key}")
            if s is not _INVALID:
                out[key] = s
        return MappingProxyType(out)

    def setting(self, node, path: str):
        """A scalar, a gradient (a list of numbers) or conditions ({filter, value} items)."""
        import yaml

        if isinstance(node, yaml.ScalarNode):
            v = _construct_scalar(node)
            if isinstance(v, float) and not math.isfinite(v):
                self.bad(node, path, f"{v} is not a usable value")
                return _INVALID
            return v
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                self.bad(node, path, "is an empty list")
                return _INVALID
            if all(isinstance(e, yaml.ScalarNode) for e in node.value):
                return Gradient(tuple(_construct_scalar(e) for e in node.value))
            if all(isinstance(e, yaml.MappingNode) for e in node.value):
                items = []
                for i, e in enumerate(node.value):
                    c = self.condition(e, f"{path}[{i}]")
                    if c is None:
                        return _INVALID
                    items.append(c)
                return Conditions(tuple(items))
            self.bad(node, path, "a list must hold only numbers (a gradient) or only {filter, value} conditions")
            return _INVALID
        if isinstance(node, yaml.MappingNode):
            m = self.mapping(node, path, ("filter", "value"))
            if m is None or "value" not in m:
                if m is not None:
                    self.bad(node, path, "expected a number, a list of numbers, or {filter, value} conditions")
                return _INVALID
            flt = self.string(m["filter"], f"{path}.filter") if "filter" in m else None
            val = self.setting(m["value"], f"{path}.value")
            return _INVALID if val is _INVALID else Conditions((Condition(flt, val),))
        self.bad(node, path, f"unexpected {_kind(node)}")
        return _INVALID

    def condition(self, node, path: str) -> Condition | None:
        m = self.mapping(node, path, ("filter", "value"))
        if m is None:
            return None
        if "value" not in m:
            self.bad(node, path, "a condition needs a value")
            return None
        flt = self.string(m["filter"], f"{path}.filter") if "filter" in m else None
        val = self.setting(m["value"], f"{path}.value")
        if val is _INVALID:
            return None
        if isinstance(val, Conditions):
            self.bad(node, f"{path}.value", "conditions cannot nest")
            return None
        return Condition(flt, val)


class _Inputs(_Settings):
    """The models merged: ``models:`` entries, or ``slices:`` with their sources and layer ranges."""

    def model_input(self, node, path: str, in_slice: bool) -> ModelInput | None:
        import yaml

        if isinstance(node, yaml.ScalarNode) and not in_slice:  # "- org/model" shorthand
            ref = self.model_ref(node, path)
            return ModelInput(ref) if ref else None
        m = self.mapping(node, path, SOURCE_KEYS if in_slice else MODEL_KEYS)
        if m is None:
            return None
        if "model" not in m:
            self.bad(node, path, "needs a model")
            return None
        ref = self.model_ref(m["model"], f"{path}.model")
        params = self.params(m["parameters"], f"{path}.parameters") if "parameters" in m else NO_PARAMS
        rng = None
        if in_slice:
            if "layer_range" not in m:
                self.bad(node, path, "a slice source needs layer_range: [start, end]")
                return None
            rng = self.layer_range(m["layer_range"], f"{path}.layer_range")
            if rng is None:
                return None
        return ModelInput(ref, params, rng) if ref else None

    def layer_range(self, node, path: str) -> tuple[int, int] | None:
        import yaml

        vals = None
        if (
            isinstance(node, yaml.SequenceNode)
            and len(node.value) == 2
            and all(isinstance(e, yaml.ScalarNode) for e in node.value)
        ):
            vals = [_construct_scalar(e) for e in node.value]
        if vals is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            self.bad(node, path, "expected [start, end] (two whole numbers, end exclusive)")
            return None
        a, b = vals
        if a < 0 or b <= a:
            self.bad(node, path, f"[{a}, {b}] is empty or negative; end is exclusive and must exceed start")
            return None
        return (a, b)

    def models(self, node, path: str = "models") -> tuple[ModelInput, ...] | None:
        import yaml

        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.bad(node, path, "expected a non-empty list of models")
            return None
        return tuple(x for i, e in enumerate(node.value) if (x := self.model_input(e, f"{path}[{i}]", False)))

    def slices(self, node, path: str = "slices") -> tuple[SliceDef, ...] | None:
        import yaml

        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.bad(node, path, "expected a non-empty list of slices")
            return None
        out = []
        for i, e in enumerate(node.value):
            sm = self.mapping(e, f"{path}[{i}]", SLICE_KEYS)
            if sm is None:
                continue
            srcs_node = sm.get("sources")
            if srcs_node is None or not isinstance(srcs_node, yaml.SequenceNode) or not srcs_node.value:
                self.bad(e, f"{path}[{i}]", "needs sources: a non-empty list of {model, layer_range}")
                continue
            srcs = tuple(
                x for j, s in enumerate(srcs_node.value) if (x := self.model_input(s, f"{path}[{i}].sources[{j}]", True))
            )
            lengths = {s.layer_range[1] - s.layer_range[0] for s in srcs if s.layer_range}
            if len(lengths) > 1:
                self.bad(
                    srcs_node,
                    f"{path}[{i}].sources",
                    f"all sources of a slice need the same number of layers, got {sorted(lengths)}",
                )
            sb = self.model_ref(sm["base_model"], f"{path}[{i}].base_model") if "base_model" in sm else None
            sp = self.params(sm["parameters"], f"{path}[{i}].parameters") if "parameters" in sm else NO_PARAMS
            out.append(SliceDef(srcs, sb, sp))
        return tuple(out)

    def modules(self, node) -> dict[str, ModuleDef] | None:
        """``modules:``: module name -> {models or slices, parameters} (which names exist is the model's
        business: the planner checks them against the model type)."""
        import yaml

        if not isinstance(node, yaml.MappingNode) or not node.value:
            self.bad(node, "modules", "expected a mapping of module name: {models or slices, parameters}")
            return None
        known = tuple(k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode))
        m = self.mapping(node, "modules", known)
        if m is None:
            return None
        out = {}
        for name, v in m.items():
            path = f"modules.{name}"
            mm = self.mapping(v, path, MODULE_KEYS)
            if mm is None:
                continue
            if ("models" in mm) == ("slices" in mm):
                self.bad(v, path, "give models: or slices: (one of them) for each module")
                continue
            models = self.models(mm["models"], f"{path}.models") if "models" in mm else None
            slices = self.slices(mm["slices"], f"{path}.slices") if "slices" in mm else None
            params = self.params(mm["parameters"], f"{path}.parameters") if "parameters" in mm else NO_PARAMS
            out[name] = ModuleDef(models, slices, params)
        return out


class _Reader(_Inputs):
    """The whole recipe: the top-level keys."""

    def tokenizer(self, top: dict) -> tuple[str | None, dict, int | None]:
        """(source, tokens, pad_to_multiple_of) from tokenizer_source or the tokenizer block."""
        tok, tokens, pad = None, {}, None
        if "tokenizer_source" in top and "tokenizer" in top:
            self.bad(top["tokenizer"], "tokenizer", "give tokenizer_source or tokenizer, not both")
        elif "tokenizer_source" in top:
            tok = self.string(top["tokenizer_source"], "tokenizer_source")
        elif "tokenizer" in top:
            tm = self.mapping(top["tokenizer"], "tokenizer", TOKENIZER_KEYS)
            if tm is not None:
                tok = self.string(tm["source"], "tokenizer.source") if "source" in tm else "union"  # mergekit's default
                if "tokens" in tm:
                    tokens = self.tokens(tm["tokens"])
                if "pad_to_multiple_of" in tm:
                    v = self.scalar(tm["pad_to_multiple_of"], "tokenizer.pad_to_multiple_of")
                    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                        self.bad(
                            tm["pad_to_multiple_of"], "tokenizer.pad_to_multiple_of", f"expected a whole number >= 1, got {v!r}"
                        )
                    else:
                        pad = v
        tok = tok.strip() if tok else None
        if tok is not None and tok.lower() in ("union", "base"):
            tok = tok.lower()
        return tok, tokens, pad

    def tokens(self, node) -> dict:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            self.bad(node, "tokenizer.tokens", f"expected a mapping of token: {{source, force}}, got {_kind(node)}")
            return {}
        out = {}
        for k, v in node.value:
            name = _construct_scalar(k) if isinstance(k, yaml.ScalarNode) else None
            path = f"tokenizer.tokens.{name}"
            if not isinstance(name, str) or not name:
                self.bad(k, "tokenizer.tokens", "token keys must be the token text")
                continue
            m = self.mapping(v, path, TOKEN_KEYS)
            if m is None:
                continue
            force = False
            if "force" in m:
                f = self.scalar(m["force"], f"{path}.force")
                if not isinstance(f, bool):
                    self.bad(m["force"], f"{path}.force", f"expected true or false, got {f!r}")
                else:
                    force = f
            src = self.token_source(m["source"], f"{path}.source") if "source" in m else None
            if src is _INVALID:
                continue
            if force and src is None:
                self.bad(v, path, "force needs a source")
                continue
            out[name] = TokenSetting(src, force)
        return out

    def token_source(self, node, path: str):
        import yaml

        if isinstance(node, yaml.ScalarNode):
            ref = self.model_ref(node, path)
            return TokenSource("model", ref) if ref else _INVALID
        m = self.mapping(node, path, TOKEN_SOURCE_KEYS)
        if m is None:
            return _INVALID
        kind = self.string(m["kind"], f"{path}.kind") if "kind" in m else None
        if kind == "zero":
            extra = [k for k in m if k != "kind"]
            if extra:
                self.bad(node, path, f"kind: zero takes no {', '.join(extra)}")
                return _INVALID
            return TokenSource("zero")
        if kind != "model_token":
            self.bad(node, path, f"kind must be model_token or zero, got {kind!r}")
            return _INVALID
        if "model" not in m:
            self.bad(node, path, "kind: model_token needs a model")
            return _INVALID
        ref = self.model_ref(m["model"], f"{path}.model")
        if ("token" in m) == ("token_id" in m):
            self.bad(node, path, "give exactly one of token or token_id")
            return _INVALID
        if "token" in m:
            t = self.string(m["token"], f"{path}.token")
            return TokenSource("model_token", ref, token=t) if ref and t is not None else _INVALID
        tid = self.scalar(m["token_id"], f"{path}.token_id")
        if isinstance(tid, bool) or not isinstance(tid, int) or tid < 0:
            self.bad(m["token_id"], f"{path}.token_id", f"expected a token id (a whole number >= 0), got {tid!r}")
            return _INVALID
        return TokenSource("model_token", ref, token_id=tid) if ref else _INVALID

    def chat_template(self, node) -> str | None:
        chat = self.string(node, "chat_template")
        if chat is None or not chat.strip():
            return None
        if chat.strip() == "auto":
            return "auto"
        if is_template_name(chat):
            if chat.strip() not in CHAT_TEMPLATES:
                self.bad(
                    node,
                    "chat_template",
                    f"unknown chat template {chat!r}; use auto, Jinja text, or one of: {', '.join(CHAT_TEMPLATES)}"
                    + did_you_mean(chat.strip(), CHAT_TEMPLATES),
                )
                return None
            return chat.strip()
        try:
            import jinja2
        except ImportError:  # checked when transformers renders it
            return chat
        try:
            jinja2.Environment().parse(chat)
        except jinja2.TemplateSyntaxError as e:
            self.bad(node, "chat_template", f"the Jinja template does not parse (its line {e.lineno}): {e.message}")
            return None
        return chat

    def recipe(self, root, text: str) -> MergeRecipe:
        top = self.mapping(root, "", TOP_KEYS)
        if top is None:
            raise PlanError(self.problems, f"the recipe {self.source}")
        method = None
        if "merge_method" not in top:
            self.problems.append(f"{self.source}: merge_method is missing (e.g. merge_method: ties)")
        else:
            method = self.string(top["merge_method"], "merge_method")
        base = self.model_ref(top["base_model"], "base_model") if "base_model" in top else None
        models = slices = modules = None
        given = [k for k in ("models", "slices", "modules") if k in top]
        if len(given) > 1:
            self.bad(top[given[1]], given[1], "give only one of models:, slices: or modules:")
        elif not given:
            self.problems.append(f"{self.source}: the recipe needs models: (a list of models), slices: or modules:")
        if "models" in top:
            models = self.models(top["models"])
        elif "slices" in top:
            slices = self.slices(top["slices"])
        elif "modules" in top:
            modules = self.modules(top["modules"])
        tok, tokens, pad = self.tokenizer(top)
        name = self.string(top["name"], "name") if "name" in top else None
        return MergeRecipe(
            merge_method=(method or "").strip(),
            base_model=base,
            models=models,
            slices=slices,
            modules=None if modules is None else MappingProxyType(modules),
            parameters=self.params(top["parameters"], "parameters") if "parameters" in top else NO_PARAMS,
            dtype=self.dtype(top["dtype"], "dtype") if "dtype" in top else None,
            out_dtype=self.dtype(top["out_dtype"], "out_dtype") if "out_dtype" in top else None,
            tokenizer_source=tok,
            tokens=MappingProxyType(tokens),
            pad_to_multiple_of=pad,
            name=name.strip() if name else None,
            chat_template=self.chat_template(top["chat_template"]) if "chat_template" in top else None,
            source=self.source,
            text=text,
            where=MappingProxyType(dict(self.where)),
        )


_INVALID = object()


def _construct_scalar(node):
    import yaml

    return yaml.SafeLoader("").construct_object(node, deep=True) if node.tag != "tag:yaml.org,2002:str" else node.value


def _kind(node) -> str:
    import yaml

    return {yaml.ScalarNode: "a single value", yaml.SequenceNode: "a list", yaml.MappingNode: "a mapping"}.get(
        type(node), "something else"
    )
