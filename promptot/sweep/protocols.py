"""The protocol file (``configs/protocols.yaml``) and its expansion into jobs.

The file's comments describe its format. :func:`load_protocols` reads and checks it; :func:`expand` turns one
protocol and a :class:`Selection` (trainers, datasets, shots, seeds, overrides) into :class:`~.jobs.Job` s, after
checking that every config file they would use exists.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..errors import UserError
from .jobs import Job

KINDS = ("fewshot", "base2new", "transfer", "zeroshot")
PROTOCOL_KEYS = {"title", "kind", "datasets", "source", "shots", "seeds", "output", "eval_output",
                 "zeroshot_output"}
METHOD_KEYS = {"trainer", "config_dir", "zero_shot", "params"}
RECIPE_KEYS = {"config", "opts", "epochs", "output", "eval_output", "load_epoch", "stages"}
STAGE_KEYS = {"name", "config", "opts", "output", "seeds"}
#: Dassl's OPTIM.MAX_EPOCH default, for a config that does not set it
DEFAULT_MAX_EPOCH = 10


class ProtocolError(UserError):
    """The protocol file, or what was asked of it, is wrong."""


def repo_root() -> str:
    """The repository holding ``train.py`` and ``configs/``: the current folder if it is one, else the folder
    above the installed ``promptot`` package (an editable install of a checkout)."""
    here = os.getcwd()
    if os.path.isfile(os.path.join(here, "train.py")) and os.path.isdir(os.path.join(here, "configs")):
        return here
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------- the file
@dataclass
class Stage:
    name: str
    config: Any
    opts: Dict[str, Any]
    output: Optional[str]
    seeds: Optional[List[int]] = None


@dataclass
class Recipe:
    """How one method runs one protocol."""

    config: Any = None
    opts: Dict[str, Any] = field(default_factory=dict)
    epochs: Any = None
    output: Optional[str] = None
    eval_output: Optional[str] = None
    load_epoch: Any = None
    stages: List[Stage] = field(default_factory=list)


@dataclass
class Method:
    name: str
    trainer: str
    config_dir: str
    zero_shot: bool
    params: Dict[str, Any]
    recipes: Dict[str, Recipe]


@dataclass
class Protocol:
    name: str
    title: str
    kind: str
    datasets: List[str]
    source: Optional[str]
    shots: List[int]
    seeds: List[int]
    output: Optional[str]
    eval_output: Optional[str]
    zeroshot_output: Optional[str]


@dataclass
class ProtocolFile:
    path: str
    protocols: Dict[str, Protocol]
    methods: Dict[str, Method]

    def methods_for(self, protocol: str) -> List[str]:
        """Names of the methods with an entry for ``protocol``."""
        return [m for m, spec in self.methods.items() if protocol in spec.recipes]


def _fail(path: str, where: str, what: str) -> None:
    raise ProtocolError(f"{path}, {where}: {what}")


def _check_keys(path: str, where: str, d: Any, allowed: Iterable[str]) -> None:
    if not isinstance(d, dict):
        _fail(path, where, f"expected a mapping, got {type(d).__name__} {d!r}.")
    extra = sorted(set(d) - set(allowed))
    if extra:
        _fail(path, where, f"unknown key(s) {extra}; allowed: {sorted(allowed)}. Check the spelling.")


def _int_list(path: str, where: str, v: Any) -> List[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        _fail(path, where, f"expected a list of integers, got {v!r}.")
    return list(v)


def _datasets(path: str, where: str, v: Any, groups: Mapping[str, List[str]]) -> List[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        _fail(path, where, f"expected a list of dataset stems or group names, got {v!r}.")
    out: List[str] = []
    for x in v:
        for d in groups.get(x, [x]):
            if d not in out:
                out.append(str(d))
    return out


def load_protocols(path: Optional[str] = None) -> ProtocolFile:
    """Read and check the protocol file (default: ``configs/protocols.yaml`` of the repository)."""
    path = path or os.path.join(repo_root(), "configs", "protocols.yaml")
    if not os.path.isfile(path):
        raise ProtocolError(f"Protocol file {path} not found. Run from the repository root or pass "
                            "--protocol-file PATH.")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ProtocolError(f"{path} is not valid YAML: {e}") from e
    _check_keys(path, "top level", raw, {"version", "dataset_groups", "protocols", "methods"})
    groups = raw.get("dataset_groups") or {}
    protocols: Dict[str, Protocol] = {}
    for name, p in (raw.get("protocols") or {}).items():
        where = f"protocols.{name}"
        _check_keys(path, where, p, PROTOCOL_KEYS)
        if p.get("kind") not in KINDS:
            _fail(path, where, f"kind must be one of {list(KINDS)}, got {p.get('kind')!r}.")
        kind = p["kind"]
        if kind == "transfer" and not p.get("source"):
            _fail(path, where, "a transfer protocol needs `source` (the dataset the prompts are learned on).")
        for key in {"fewshot": ("output",), "base2new": ("output", "eval_output"),
                    "transfer": ("output", "eval_output"), "zeroshot": ()}[kind] + ("zeroshot_output",):
            if not p.get(key):
                _fail(path, where, f"`{key}` (an output-folder template) is missing.")
        protocols[name] = Protocol(
            name=name, title=str(p.get("title", name)), kind=kind,
            datasets=_datasets(path, where + ".datasets", p.get("datasets", []), groups),
            source=p.get("source"),
            shots=_int_list(path, where + ".shots", p.get("shots", [])) if kind != "zeroshot" else [],
            seeds=_int_list(path, where + ".seeds", p.get("seeds", [])) if kind != "zeroshot" else [],
            output=p.get("output"), eval_output=p.get("eval_output"), zeroshot_output=p.get("zeroshot_output"))
    methods: Dict[str, Method] = {}
    for name, m in (raw.get("methods") or {}).items():
        where = f"methods.{name}"
        _check_keys(path, where, m, METHOD_KEYS | set(protocols))
        recipes = {}
        for pname in protocols:
            if pname not in m:
                continue
            r = m[pname] or {}
            rwhere = f"{where}.{pname}"
            _check_keys(path, rwhere, r, RECIPE_KEYS)
            stages = []
            for i, s in enumerate(r.get("stages") or []):
                _check_keys(path, f"{rwhere}.stages[{i}]", s, STAGE_KEYS)
                if not s.get("name") or not s.get("config"):
                    _fail(path, f"{rwhere}.stages[{i}]", "a stage needs `name` and `config`.")
                stages.append(Stage(name=str(s["name"]), config=s["config"], opts=dict(s.get("opts") or {}),
                                    output=s.get("output"),
                                    seeds=_int_list(path, f"{rwhere}.stages[{i}].seeds", s["seeds"])
                                    if "seeds" in s else None))
            if not stages and r.get("config") is None:
                _fail(path, rwhere, "needs `config` (a config stem or a table of them) or `stages`.")
            if stages and protocols[pname].kind == "zeroshot":
                _fail(path, rwhere, "a zero-shot protocol trains nothing: `stages` make no sense here.")
            recipes[pname] = Recipe(config=r.get("config"), opts=dict(r.get("opts") or {}), epochs=r.get("epochs"),
                                    output=r.get("output"), eval_output=r.get("eval_output"),
                                    load_epoch=r.get("load_epoch"), stages=stages)
        methods[name] = Method(name=name, trainer=str(m.get("trainer", name)),
                               config_dir=str(m.get("config_dir", m.get("trainer", name))),
                               zero_shot=bool(m.get("zero_shot", False)), params=dict(m.get("params") or {}),
                               recipes=recipes)
    return ProtocolFile(path=path, protocols=protocols, methods=methods)


# ---------------------------------------------------------------------------------------------- lookups
_MISSING = object()


def lookup(table: Any, dataset: str, shots: Optional[int]) -> Any:
    """A table's value for a job: the entry for the dataset stem, else for the number of shots, else
    ``default``; a scalar is its own value. Returns ``_MISSING`` when nothing matches."""
    if not isinstance(table, dict):
        return table
    if dataset in table:
        return table[dataset]
    if shots is not None and shots in table:
        return table[shots]
    return table.get("default", _MISSING)


class _Ctx(dict):
    """Template variables; an unknown one is an error naming it and what is available."""

    def __init__(self, where: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.where = where

    def __missing__(self, key: str) -> Any:
        raise ProtocolError(f"{self.where}: template variable {{{key}}} is not defined here; available: "
                            f"{sorted(k for k in self if not k.startswith('_'))}.")


class _StageRef:
    def __init__(self, output: str, epochs: int) -> None:
        self.output, self.epochs = output, epochs


def fill(template: Any, ctx: _Ctx) -> str:
    """``template`` with its ``{variables}`` from ``ctx``."""
    text = str(template)
    try:
        return string.Formatter().vformat(text, (), ctx)
    except (AttributeError, IndexError, ValueError) as e:
        raise ProtocolError(f"{ctx.where}: cannot fill {text!r}: {e}") from e


def yaml_max_epoch(repo: str, config: str, dataset_yaml: str, opts: Sequence[str]) -> int:
    """The epoch a training job ends at, read without building its config: the last ``OPTIM.MAX_EPOCH`` of the
    options, else the method yaml's, else the dataset yaml's, else Dassl's default (10)."""
    for i in range(len(opts) - 2, -1, -2):
        if opts[i] == "OPTIM.MAX_EPOCH":
            return int(opts[i + 1])
    for f in (config, dataset_yaml):
        path = f if os.path.isabs(f) else os.path.join(repo, f)
        if os.path.isfile(path):
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
            value = (data.get("OPTIM") or {}).get("MAX_EPOCH")
            if value is not None:
                return int(value)
    return DEFAULT_MAX_EPOCH


# ---------------------------------------------------------------------------------------------- expansion
@dataclass
class Selection:
    """What to run of a protocol; ``None`` means the protocol's own list."""

    trainers: Optional[List[str]] = None
    datasets: Optional[List[str]] = None
    source: Optional[str] = None
    shots: Optional[List[int]] = None
    seeds: Optional[List[int]] = None
    config: Optional[str] = None  #: one config (stem or yaml path) for every job instead of the protocol's
    params: Dict[str, str] = field(default_factory=dict)
    opts: List[str] = field(default_factory=list)
    load_epoch: Optional[int] = None
    only: Optional[str] = None  #: "train" or "eval": keep only those jobs (dependencies must then exist)
    stage: Optional[str] = None  #: keep only the jobs of this training stage (e.g. PLOT++ "visiononly")


def _config_path(method: Method, stem_or_path: str) -> str:
    s = str(stem_or_path)
    if s.endswith((".yaml", ".yml")) or os.sep in s:
        return s
    return f"configs/trainers/{method.config_dir}/{s}.yaml"


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _opt_pairs(opts: Mapping[str, Any], ctx: _Ctx, dataset: str, shots: Optional[int],
               drop: Sequence[str] = ()) -> List[str]:
    out: List[str] = []
    for key, value in opts.items():
        if key in drop:
            continue
        value = lookup(value, dataset, shots)
        if value is _MISSING:
            continue
        out += [str(key), fill(value, ctx)]
    return out


def _has(opts: Sequence[str], key: str) -> bool:
    return key in opts[0::2]


class _Builder:
    def __init__(self, pf: ProtocolFile, protocol: Protocol, sel: Selection, repo: str, data_root: str,
                 output_root: str) -> None:
        self.pf, self.p, self.sel, self.repo = pf, protocol, sel, repo
        self.data_root, self.output_root = data_root, output_root
        self.jobs: List[Job] = []

    # -- helpers
    def where(self, method: Method) -> str:
        return f"{self.pf.path}, methods.{method.name}.{self.p.name}"

    def ctx(self, method: Method, **kw: Any) -> _Ctx:
        params = dict(method.params)
        params.update({k: v for k, v in self.sel.params.items() if k in method.params})
        base = dict(trainer=method.trainer, method=method.name, source=self.sel.source or self.p.source or "",
                    subsample="all")
        base.update(params)
        base.update(kw)
        return _Ctx(self.where(method), **base)

    def config_for(self, method: Method, table: Any, dataset: str, shots: Optional[int]) -> str:
        if self.sel.config:
            return _config_path(method, self.sel.config)
        value = lookup(table, dataset, shots)
        if value is _MISSING:
            raise ProtocolError(f"{self.where(method)}.config has no entry for dataset {dataset!r} or {shots} shots "
                                "and no `default`. Add one, or pass --config CFG.")
        return _config_path(method, value)

    def out(self, template: str, ctx: _Ctx) -> str:
        return os.path.join(self.output_root, fill(template, ctx))

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    def max_epoch(self, config: str, dataset: str, opts: Sequence[str]) -> int:
        return yaml_max_epoch(self.repo, config, f"configs/datasets/{dataset}.yaml", opts)

    def epochs(self, method: Method, recipe: Recipe, dataset: str, shots: Optional[int]) -> Optional[int]:
        if recipe.epochs is None:
            return None
        value = lookup(recipe.epochs, dataset, shots)
        if value is _MISSING:
            raise ProtocolError(f"{self.where(method)}.epochs has no entry for dataset {dataset!r} or {shots} shots "
                                "and no `default`.")
        return int(value)

    # -- trained methods
    def train_jobs(self, method: Method, recipe: Recipe, dataset: str, shots: int, seed: int,
                   subsample: str = "all") -> Job:
        """The training job(s) of one (dataset, shots, seed); returns the last stage's job."""
        epochs = self.epochs(method, recipe, dataset, shots)
        stages = recipe.stages or [Stage(name="", config=recipe.config, opts=recipe.opts,
                                         output=recipe.output or self.p.output)]
        refs: Dict[str, _StageRef] = {}
        needs: Dict[str, str] = {}
        last = None
        for st in stages:
            st_seed = st.seeds[0] if st.seeds else seed
            config = self.config_for(method, st.config, dataset, shots)
            ctx = self.ctx(method, dataset=dataset, shots=shots, seed=st_seed, config=_stem(config),
                           subsample=subsample, epochs=epochs if epochs is not None else "", **refs)
            opts = _opt_pairs(st.opts, ctx, dataset, shots)
            if not _has(opts, "DATASET.NUM_SHOTS"):
                opts += ["DATASET.NUM_SHOTS", str(shots)]
            if subsample != "all":
                opts += ["DATASET.SUBSAMPLE_CLASSES", subsample]
            if epochs is not None:
                opts += ["OPTIM.MAX_EPOCH", str(epochs)]
            opts += self.sel.opts
            deps = [needs[n] for n in refs if f"{{{n}." in str(st.opts) or f"{{{n}." in str(st.output)]
            job = self.add(Job(
                id="", protocol=self.p.name, method=method.name, trainer=method.trainer, role="train",
                dataset=dataset, config=config, output_dir=self.out(st.output or recipe.output or self.p.output, ctx),
                data_root=self.data_root, opts=opts, shots=shots, seed=st_seed, subsample=subsample, stage=st.name,
                max_epoch=self.max_epoch(config, dataset, opts), needs=deps))
            if st.name:
                refs[st.name] = _StageRef(job.output_dir, int(job.max_epoch or 0))
                needs[st.name] = job.output_dir
            last = job
        assert last is not None
        return last

    def eval_job(self, method: Method, recipe: Recipe, trained: Job, dataset: str, shots: int, seed: int,
                 subsample: str, keep_shots: bool) -> Job:
        config = trained.config
        ctx = self.ctx(method, dataset=dataset, shots=shots, seed=seed, config=_stem(config), subsample=subsample,
                       epochs=trained.max_epoch)
        # the model is built as the (last stage of) training built it; it loads --model-dir, not MODEL.INIT_WEIGHTS
        source_opts = recipe.stages[-1].opts if recipe.stages else recipe.opts
        drop = ("MODEL.INIT_WEIGHTS",) + (() if keep_shots else ("DATASET.NUM_SHOTS",))
        opts = _opt_pairs(source_opts, ctx, dataset, shots, drop=drop)
        if keep_shots and not _has(opts, "DATASET.NUM_SHOTS"):
            opts += ["DATASET.NUM_SHOTS", str(shots)]
        if subsample != "all":
            opts += ["DATASET.SUBSAMPLE_CLASSES", subsample]
        opts += self.sel.opts
        if self.sel.load_epoch is not None:
            load = self.sel.load_epoch
        elif recipe.load_epoch is not None:
            load = int(lookup(recipe.load_epoch, trained.dataset, shots))
        else:
            load = int(trained.max_epoch or 0)
        template = recipe.eval_output or self.p.eval_output
        return self.add(Job(
            id="", protocol=self.p.name, method=method.name, trainer=method.trainer, role="eval", dataset=dataset,
            config=config, output_dir=self.out(template, ctx), data_root=self.data_root, opts=opts, shots=shots,
            seed=seed, subsample=subsample, model_dir=trained.output_dir, load_epoch=load,
            needs=[trained.output_dir]))

    def zeroshot_job(self, method: Method, recipe: Recipe, dataset: str, subsample: str = "all") -> Job:
        config = self.config_for(method, recipe.config, dataset, None)
        ctx = self.ctx(method, dataset=dataset, shots="", seed="", config=_stem(config), subsample=subsample)
        opts = _opt_pairs(recipe.opts, ctx, dataset, None, drop=("DATASET.NUM_SHOTS",))
        if subsample != "all":
            opts += ["DATASET.SUBSAMPLE_CLASSES", subsample]
        opts += self.sel.opts
        return self.add(Job(
            id="", protocol=self.p.name, method=method.name, trainer=method.trainer, role="eval", dataset=dataset,
            config=config, output_dir=self.out(recipe.output or self.p.zeroshot_output, ctx),
            data_root=self.data_root, opts=opts, subsample=subsample))

    # -- protocols
    def build(self, method: Method) -> None:
        recipe = method.recipes[self.p.name]
        kind, sel = self.p.kind, self.sel
        datasets = sel.datasets or self.p.datasets
        shots = sel.shots or self.p.shots
        seeds = sel.seeds or self.p.seeds
        if method.zero_shot:
            if kind == "base2new":
                for d in datasets:
                    self.zeroshot_job(method, recipe, d, "base")
                    self.zeroshot_job(method, recipe, d, "new")
            elif kind == "transfer":
                for d in [sel.source or self.p.source] + list(datasets):
                    self.zeroshot_job(method, recipe, str(d))
            else:
                for d in datasets:
                    self.zeroshot_job(method, recipe, d)
            return
        if kind == "zeroshot":
            raise ProtocolError(f"{method.name} learns prompts; the zeroshot protocol only runs zero-shot trainers "
                                f"({', '.join(m for m in self.pf.methods if self.pf.methods[m].zero_shot)}).")
        for k in shots:
            for s in seeds:
                if kind == "fewshot":
                    for d in datasets:
                        self.train_jobs(method, recipe, d, k, s)
                elif kind == "base2new":
                    for d in datasets:
                        trained = self.train_jobs(method, recipe, d, k, s, "base")
                        self.eval_job(method, recipe, trained, d, k, s, "new", keep_shots=True)
                else:
                    trained = self.train_jobs(method, recipe, str(sel.source or self.p.source), k, s)
                    for d in datasets:
                        self.eval_job(method, recipe, trained, d, k, s, "all", keep_shots=False)


def _order(jobs: List[Job], protocol: Protocol) -> List[Job]:
    """Few-shot and base-to-new plans go dataset by dataset (as the reference scripts loop); each job after the
    jobs it needs."""
    if protocol.kind in ("fewshot", "base2new"):
        rank = {d: i for i, d in enumerate(dict.fromkeys(j.dataset for j in jobs))}
        jobs = sorted(jobs, key=lambda j: (j.method, rank[j.dataset]))
    return jobs


def expand(pf: ProtocolFile, protocol: str, sel: Selection, repo: Optional[str] = None, data_root: str = "DATA",
           output_root: str = "output") -> List[Job]:
    """The jobs of ``protocol`` for ``sel``, deduplicated by output folder, each after the jobs it needs.
    Raises :class:`ProtocolError` for an unknown protocol, trainer or dataset, a missing config file, or two
    different jobs writing to one folder."""
    repo = repo or repo_root()
    if protocol not in pf.protocols:
        raise ProtocolError(f"Unknown protocol {protocol!r}; {pf.path} defines {sorted(pf.protocols)}.")
    p = pf.protocols[protocol]
    available = pf.methods_for(protocol)
    trainers = sel.trainers or available
    unknown = [t for t in trainers if t not in available]
    if unknown and not sel.config:
        raise ProtocolError(f"No {protocol!r} entry for {unknown} in {pf.path}; methods with one: {available}. Add an "
                            f"entry under methods.<name>.{protocol} (a config per protocol is enough), or pass "
                            "--config CFG to run it with that config and the protocol's folders.")
    methods = dict(pf.methods)
    for t in unknown:  # with --config: the trainer's own config folder and the protocol's defaults
        known = pf.methods.get(t)
        methods[t] = Method(name=t, trainer=known.trainer if known else t,
                            config_dir=known.config_dir if known else t,
                            zero_shot=known.zero_shot if known else False,
                            params=dict(known.params) if known else {}, recipes={protocol: Recipe(config=sel.config)})
    pf = ProtocolFile(path=pf.path, protocols=pf.protocols, methods=methods)
    if sel.only not in (None, "train", "eval"):
        raise ProtocolError(f"--only must be train or eval, got {sel.only!r}")
    for k, v in sel.params.items():
        if not any(k in pf.methods[t].params for t in trainers):
            known = {t: sorted(pf.methods[t].params) for t in trainers}
            raise ProtocolError(f"--param {k}={v}: none of {trainers} has a parameter {k!r}; their parameters: "
                                f"{known} ({pf.path}, methods.<name>.params).")
    b = _Builder(pf, p, sel, repo, data_root, output_root)
    for t in trainers:
        b.build(pf.methods[t])
    _check_files(b.jobs, repo, pf)
    jobs: Dict[str, Job] = {}
    for j in b.jobs:
        j.id = os.path.relpath(j.output_dir, output_root)
        if j.output_dir in jobs:
            if jobs[j.output_dir].argv() != j.argv():
                raise ProtocolError(
                    f"Two jobs of {protocol!r} write to {j.output_dir} with different commands:\n  "
                    f"{jobs[j.output_dir].command()}\n  {j.command()}\nGive them different output templates in "
                    f"{pf.path}.")
            continue
        jobs[j.output_dir] = j
    ordered = _order(list(jobs.values()), p)
    for j in ordered:
        j.needs = list(dict.fromkeys(j.needs))
    if sel.only:
        ordered = [j for j in ordered if j.role == sel.only]
    if sel.stage:
        stages = {j.stage for j in ordered if j.stage}
        if sel.stage not in stages:
            raise ProtocolError(f"--stage {sel.stage}: the jobs of {protocol!r} have stages {sorted(stages) or 'none'}.")
        ordered = [j for j in ordered if j.stage == sel.stage]
    return ordered


def _check_files(jobs: Sequence[Job], repo: str, pf: ProtocolFile) -> None:
    missing: Dict[str, List[str]] = {}
    for j in jobs:
        for f in (j.config, f"configs/datasets/{j.dataset}.yaml"):
            path = f if os.path.isabs(f) else os.path.join(repo, f)
            if not os.path.isfile(path):
                missing.setdefault(f, [])
                tag = f"{j.method}/{j.protocol}"
                if tag not in missing[f]:
                    missing[f].append(tag)
    if missing:
        lines = "; ".join(f"{f} (used by {', '.join(tags)})" for f, tags in sorted(missing.items()))
        raise ProtocolError(f"Config file(s) not found under {repo}: {lines}. Create the file, fix the entry in "
                            f"{pf.path}, or pick another with --config / --datasets.")


def dataset_names(repo: Optional[str] = None) -> Dict[str, str]:
    """``DATASET.NAME`` of every dataset config stem (``configs/datasets/<stem>.yaml``)."""
    repo = repo or repo_root()
    folder = os.path.join(repo, "configs", "datasets")
    out: Dict[str, str] = {}
    if os.path.isdir(folder):
        for f in sorted(os.listdir(folder)):
            if f.endswith(".yaml"):
                with open(os.path.join(folder, f)) as fh:
                    data = yaml.safe_load(fh) or {}
                name = (data.get("DATASET") or {}).get("NAME")
                if name:
                    out[f[:-5]] = str(name)
    return out


def plan_summary(jobs: Sequence[Job]) -> List[Tuple[str, int]]:
    """(method role, count) pairs for the plan header."""
    counts: Dict[str, int] = {}
    for j in jobs:
        key = f"{j.protocol} {j.method} {j.role}"
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items())
