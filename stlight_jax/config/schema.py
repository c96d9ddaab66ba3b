"""Every run-config field, declared once: its default, the rule its value must follow, and what it
means. The rest is derived from this file:

- `configs/common.py`'s `get_base_config()` (the ConfigDict every dataset config starts from)
  is `defaults()`;
- `config/validation.py` checks each field against its `rule` and names the closest declared
  key for an undeclared one;
- `models.ModelConfig` is the `Model` section (its fields and defaults), plus its methods;
- the allowed choices (`CONV_IMPLS`, `INITS`, ...) are read by ops.py, models.py and the data
  and reference code from here.

A new field is one line in its section below. Pure Python: imports nothing of the package, so
models.py and config/ both import it. Defaults are Moving MNIST / STLight-S (paper Table 2).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# ---------------------------------------------------------------------------------------------
# Allowed choices, one tuple each.

CONV_IMPLS = ("auto", "lax", "shifted")  # depthwise conv formulation (ops.DEPTHWISE_IMPLS)
# The paper's ablations; the first of each is the paper's model. init: 'hybrid' = kaiming-normal
# (fan_out, relu, bias 0) for encoder and mixer convs and PyTorch's default for the reassemble
# conv; 'kaiming_normal' = that for every conv; 'kaiming_uniform' = PyTorch's default for every
# conv (appendix D). decoder: pixel-shuffle then the 1x1 conv, or the 1x1 conv (d -> T'*C*p^2)
# then the pixel shuffle (appendix F). skip: keep/add before blocks depth//3 and 2*depth//3,
# depth//5 and 4*depth//5, or no skip (Table 4).
INITS = ("hybrid", "kaiming_normal", "kaiming_uniform")
DECODERS = ("shuffle_reassemble", "reassemble_shuffle")
SKIPS = ("thirds", "fifths", "none")
TEST_SOURCES = ("auto", "tfds")  # Moving MNIST test set
LAYOUTS = ("NTHWC", "NTCHW")  # custom arrays
SCHEDULES = ("onecycle", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")

# ---------------------------------------------------------------------------------------------
# Rules: a rule called with a value returns None when it is fine, else the rule it breaks
# ('must be >= 1'); config/validation.py reports that as 'config.<field>=<value>: <rule>'.


@dataclasses.dataclass(frozen=True)
class Integer:
    lo: int | None = None

    def __call__(self, v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer" + (f" >= {self.lo}" if self.lo is not None else "")
        if self.lo is not None and v < self.lo:
            return f"must be >= {self.lo}"
        return None


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite int or float within the given bounds (gt: >, ge: >=, lt: <, le: <=)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __call__(self, v: Any) -> str | None:
        bounds = [(">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)]
        shown = [f"{op} {b:g}" for op, b in bounds if b is not None]
        rule = "must be a finite number" + (f" {' and '.join(shown)}" if shown else "")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return rule
        ok = (
            (self.gt is None or v > self.gt)
            and (self.ge is None or v >= self.ge)
            and (self.lt is None or v < self.lt)
            and (self.le is None or v <= self.le)
        )
        return None if ok else rule


@dataclasses.dataclass(frozen=True)
class OneOf:
    options: tuple[str, ...]

    def __call__(self, v: Any) -> str | None:
        return None if v in self.options else f"must be one of {list(self.options)}"


@dataclasses.dataclass(frozen=True)
class String:
    def __call__(self, v: Any) -> str | None:
        return None if isinstance(v, str) else "must be a string"


@dataclasses.dataclass(frozen=True)
class Boolean:
    def __call__(self, v: Any) -> str | None:
        return None if isinstance(v, bool) else "must be True or False"


@dataclasses.dataclass(frozen=True)
class Pair:
    item: Any  # the rule of each of the two values
    what: str  # 'integers >= 1': the message names the pair by it
    increasing: bool = False

    def __call__(self, v: Any) -> str | None:
        if not isinstance(v, (tuple, list)) or len(v) != 2 or any(self.item(x) for x in v):
            return f"must be a pair of {self.what}"
        if self.increasing and not v[0] < v[1]:
            return f"must be a pair of {self.what} with the first < the second"
        return None


STRING, BOOLEAN = String(), Boolean()
POSITIVE, NON_NEGATIVE = Integer(1), Integer(0)


def field(default: Any, rule: Any = None, help: str = "") -> Any:
    """One config field: `default`, the `rule` its value follows (None: the default's type
    only) and `help`, what it means."""
    return dataclasses.field(default=default, metadata={"rule": rule, "help": help})


def section(cls: type) -> Any:
    """A nested section (`config.model`, ...): the fields of dataclass `cls`."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


# ---------------------------------------------------------------------------------------------
# The sections. Shapes are NHWC: inputs (B, frames_in, H, W, channels).


@dataclasses.dataclass(frozen=True)
class Model:
    """`config.model`: the network (paper Figure 10); `models.ModelConfig` adds its methods."""

    frames_in: int = field(10, POSITIVE, "T, input frames")
    frames_out: int = field(10, POSITIVE, "T', predicted frames")
    channels: int = field(1, POSITIVE, "C")
    image_size: tuple[int, int] = field((64, 64), Pair(POSITIVE, "integers >= 1"), "(H, W)")
    dim: int = field(1000, POSITIVE, "d, latent channels")
    depth: int = field(16, POSITIVE, "de, number of STLMixer blocks")
    patch: int = field(2, POSITIVE, "p")
    overlap: int = field(0, NON_NEGATIVE, "O (0 or 1: no overlap)")
    k1: int = field(3, POSITIVE, "depthwise kernel")
    k2: int = field(7, POSITIVE, "dilated depthwise kernel")
    dilation: int = field(3, POSITIVE, "dilation of the k2 conv")
    conv_impl: str = field("auto", OneOf(CONV_IMPLS), "depthwise conv formulation")
    # The paper's ablations (configs/ablations.py); the defaults are the paper's model.
    init: str = field("hybrid", OneOf(INITS), "conv initialisation (appendix D)")
    decoder: str = field("shuffle_reassemble", OneOf(DECODERS), "decoder order (appendix F)")
    skip: str = field("thirds", OneOf(SKIPS), "inter-block skip (Table 4)")


@dataclasses.dataclass(frozen=True)
class Data:
    """`config.data`. `batch_size` is the global batch (split over processes and devices)."""

    name: str = field("mmnist", STRING, "'mmnist' | 'taxibj' | 'kth' | 'kitticaltech' | 'custom'")
    data_dir: str = field("data", STRING, "where datasets live and generated sets are cached")
    batch_size: int = field(16, POSITIVE)
    eval_batch_size: int = field(16, POSITIVE)
    seed: int = field(0, NON_NEGATIVE)
    num_train: int = field(10_000, POSITIVE, "Moving MNIST: fresh sequences per epoch")
    num_val: int = field(1_000, NON_NEGATIVE, "Moving MNIST: fixed held-out validation sequences")
    num_test: int = field(
        10_000, POSITIVE, "Moving MNIST: fixed test sequences (MNIST test digits)"
    )
    mnist_path: str = field("", STRING, "optional user MNIST (idx files dir / .npz)")
    tfds_dir: str = field("", STRING, "prepared TFDS data_dir (ArrayRecord): mnist, moving_mnist")
    test_file: str = field("", STRING, "optional mnist_test_seq.npy (the paper's test set)")
    test_source: str = field(
        "auto",
        OneOf(TEST_SOURCES),
        "Moving MNIST test set: 'auto' (test_file, else generated) | 'tfds' (TFDS moving_mnist "
        "in tfds_dir: the sequences of mnist_test_seq.npy)",
    )
    path: str = field("", STRING, "taxibj dataset.npz / kth or kitticaltech root / custom array")
    layout: str = field("NTHWC", OneOf(LAYOUTS), "custom arrays: axis order")
    value_range: tuple[float, float] = field(
        (0.0, 1.0),
        Pair(Number(), "finite numbers", increasing=True),
        "custom arrays: declared range of the stored values",
    )
    worker_count: int = field(0, NON_NEGATIVE, "grain worker processes (0: in-process)")
    read_threads: int = field(2, POSITIVE, "grain threads per process producing samples")
    prefetch_buffer_size: int = field(4, NON_NEGATIVE, "batches buffered per process (MBs each)")
    num_digits: int = field(2, POSITIVE, "Moving MNIST: digits per sequence (OpenSTL: 2)")


UNIT = Number(ge=0, lt=1)  # momentum-like: [0, 1)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """`config.optimizer`: Adam with OneCycle or cosine (paper Table 2)."""

    learning_rate: float = field(3e-3, Number(gt=0), "peak lr")
    schedule: str = field(
        "onecycle", OneOf(SCHEDULES), "'onecycle' (stepped per update) | 'cosine' (per epoch)"
    )
    pct_start: float = field(0.3, Number(gt=0, lt=1))
    div_factor: float = field(25.0, Number(gt=0))
    final_div_factor: float = field(1e4, Number(gt=0))
    cycle_momentum: bool = field(True, BOOLEAN, "OneCycle cycles Adam's beta1 0.95 -> 0.85 -> 0.95")
    base_momentum: float = field(0.85, UNIT)
    max_momentum: float = field(0.95, UNIT)
    b1: float = field(0.9, UNIT, "used when beta1 is not cycled")
    b2: float = field(0.999, UNIT)
    eps: float = field(1e-8, Number(gt=0))
    weight_decay: float = field(0.0, Number(ge=0))
    min_lr: float = field(1e-6, Number(ge=0), "cosine schedule floor")
    warmup_epochs: int = field(0, NON_NEGATIVE, "cosine schedule linear warm-up")
    warmup_lr: float = field(1e-5, Number(ge=0))


@dataclasses.dataclass(frozen=True)
class Run:
    """The whole run config (`config`)."""

    name: str = field("mmnist_S", STRING)
    seed: int = field(0, NON_NEGATIVE)
    model: Model = section(Model)
    data: Data = section(Data)
    optimizer: Optimizer = section(Optimizer)
    num_epochs: int = field(200, POSITIVE)
    l1_weight: float = field(0.0, Number(ge=0), "training loss: MSE (the paper's) + this * MAE")
    compute_dtype: str = field(
        "float32", OneOf(COMPUTE_DTYPES), "params and BatchNorm statistics stay float32"
    )
    eval_every_epochs: int = field(1, NON_NEGATIVE)
    log_every_steps: int = field(50, NON_NEGATIVE)
    checkpoint_every_steps: int = field(0, NON_NEGATIVE, "0: at the end of every epoch only")
    init_from: str = field(
        "", STRING, "Orbax checkpoint dir or PyTorch weights file (Figure 10 / STF keys)"
    )
    init_from_key_map: str = field(
        "", STRING, "JSON of regex -> Figure 10 key, for weights in other layouts"
    )


# ---------------------------------------------------------------------------------------------
# Reading the schema.


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one field declares."""

    default: Any
    rule: Any  # a rule above, or None: the default's type only
    help: str


def spec_of(f: dataclasses.Field) -> Spec:
    return Spec(f.default, f.metadata.get("rule"), f.metadata.get("help", ""))


def fields(section_cls: type | None = None, prefix: str = "") -> dict[str, Spec]:
    """Every field, dotted ('model.dim') -> its Spec, in declaration order; the whole run
    config (`Run`, looked up when called) by default."""
    out = {}
    for f in dataclasses.fields(Run if section_cls is None else section_cls):
        if "section" in f.metadata:
            out.update(fields(f.metadata["section"], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = spec_of(f)
    return out


def defaults(section_cls: type | None = None) -> dict[str, Any]:
    """The nested dict of every field's default ({'name': ..., 'model': {...}, ...})."""
    out = {}
    for f in dataclasses.fields(Run if section_cls is None else section_cls):
        out[f.name] = defaults(f.metadata["section"]) if "section" in f.metadata else f.default
    return out
