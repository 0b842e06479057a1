"""The one config schema of a run, in plain dataclasses (no Hydra or OmegaConf import here):
every key a run understands, its type, its default and what it means. ``config/loader.py``
registers them as Hydra's structured config (``base`` in the ConfigStore) and composes a preset
with overrides into a ``RunConfig``. The YAML presets in ``configs/`` only override them, and the
command line overrides anything (``ipc=10 kernel=linear``). A value of the wrong type or outside
its choices is refused when the config is composed, naming the key.

Adding a key: add a field here, with ``shaping(...)`` if it changes the synthetic set (it then
enters the run fingerprint, so an old run directory is refused rather than silently resumed
with a different meaning) or ``operational(...)`` if it does not, read it where it is used
(a key the engine, the baselines or the diagnostics read is also a field of ``CondenseSpec``
in ``method/spec.py``, the one thing they take), and document it in docs/configuration.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional, Union

import torch

from m3d_condense.kernels import ESTIMATORS, KERNELS
from m3d_condense.models import list_models
from m3d_condense.models.augment import GEOMETRIC_OPS, OP_CHOICES, AugmentSpec
from m3d_condense.pipeline.data.labeled import class_major_labels
from m3d_condense.pipeline.errors import RunError
from m3d_condense.pipeline.method.compute import PRECISIONS

MISSING = "???"  # a required key with no default (the value Hydra and OmegaConf read as missing)


class ConfigError(RunError, ValueError):
    """A preset, key or value the user gave is not valid; the message lists the valid ones."""


# Field helpers: whether a key shapes the synthetic set decides whether it is in the fingerprint.
def shaping(default: Any = MISSING, *, factory: Any = None) -> Any:
    """A key that changes the synthetic set: part of the run fingerprint."""
    return _field(default, factory, True)


def operational(default: Any = MISSING, *, factory: Any = None) -> Any:
    """A key that changes where or how a run executes, or what happens after condensation, but
    not the synthetic set: a run may resume with another value."""
    return _field(default, factory, False)


def _field(default: Any, factory: Any, shapes_set: bool) -> Any:
    meta = {"shapes_set": shapes_set}
    return field(default_factory=factory, metadata=meta) if factory is not None else field(default=default, metadata=meta)


class Choice(str, Enum):
    """A config choice: compares equal to its value (``cfg.kernel == "linear"``) and prints as it."""

    def __str__(self) -> str:
        return self.value


def choices(name: str, values: tuple[str, ...]) -> type[Choice]:
    """An enum of ``values``, so a vocabulary defined where it is implemented is checked here."""
    return Choice(name, {v: v for v in values}, module=__name__, qualname=name)


Method = choices("Method", ("m3d", "init", "random", "herding", "whole"))
Device = choices("Device", ("auto", "cpu", "cuda"))
Backend = choices("Backend", ("auto", "local", "ray"))
Kernel = choices("Kernel", KERNELS)
Estimator = choices("Estimator", ESTIMATORS)
UpdateMode = choices("UpdateMode", ("reference", "batched"))
Init = choices("Init", ("mix", "mix_first"))
Precision = choices("Precision", PRECISIONS)
Recipe = choices("Recipe", ("dsa", "imagenet"))
Source = choices("Source", ("auto", "shards", "npz", "digits"))
CacheTier = choices("CacheTier", ("auto", "device", "host", "stream"))
OpPer = choices("OpPer", OP_CHOICES)
GeometricOp = choices("GeometricOp", GEOMETRIC_OPS)
AutoSwitch = Union[str, bool]  # "auto" | true | false

# The methods a comparison names, in report order, as overrides of this schema. DM is M3D's
# engine with the linear kernel at DM's released step converted to pixel space (lr 0.1).
NAMED_METHODS: dict[str, list[str]] = {
    "random": ["method=random"], "herding": ["method=herding"], "dm": ["method=m3d", "kernel=linear", "lr=0.1"],
    "m3d": ["method=m3d", "kernel=gaussian"], "init": ["method=init"], "whole": ["method=whole"]}


def named_method(method: str, kernel: str) -> str:
    """The comparison's name of a run's method: M3D's engine with the linear kernel is DM."""
    return "dm" if method == "m3d" and kernel == "linear" else str(method)


@dataclass
class DataConfig:
    """Where the real images come from, and what they are (a prepared dataset's manifest fills
    the ``None`` ones when ``load_config`` resolves the dataset)."""

    # auto: shards if ROOT/manifest.parquet exists, else npz if ROOT/train.npz exists;
    # shards (pipeline/prepare.py output) | npz (ROOT/{train,test}.npz) | digits (built in)
    source: Source = operational(Source.auto)
    root: Optional[str] = operational(None)  # a local path or any fsspec URL: /data/in100, s3://bucket/in100
    cache: CacheTier = operational(CacheTier.auto)  # where a worker keeps its classes' images
    cache_gb: float = operational(8.0)  # host-memory budget of the cache (auto streams from the shards beyond it)
    verify: bool = operational(True)  # check every shard's size and sha256 against the manifest when reading
    read_workers: int = operational(0)  # processes decoding shards; 0: one per core (max 8) for large reads
    image_size: Optional[list[int]] = shaping(factory=lambda: [32, 32])  # [height, width] in pixels
    channels: Optional[int] = shaping(3)
    num_classes: Optional[int] = shaping(10)
    mean: Optional[list[float]] = shaping(factory=lambda: [0.5, 0.5, 0.5])  # per channel, pixels in [0, 1]
    std: Optional[list[float]] = shaping(factory=lambda: [0.5, 0.5, 0.5])
    resize: bool = shaping(False)  # resize images whose size differs from image_size (else: error)
    test_fraction: float = shaping(0.3)  # source digits only: the share of images held out as the test split

    def __post_init__(self) -> None:
        _at_least(self, "data.", 1, "channels", "num_classes")
        _at_least(self, "data.", 0, "read_workers")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and self.channels is not None and len(values) != self.channels:
                raise ConfigError(f"data.{key} has {len(values)} values, data.channels={self.channels}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"data.image_size={list(self.image_size)} must be [height, width], both >= 1")


@dataclass
class EncoderConfig:
    arch: str = shaping("convnet3")  # a registered network (models.list_models())
    width: Optional[int] = shaping(None)  # None: the architecture's default (ConvNet 128, ResNet 64)


@dataclass
class RayConfig:
    address: Optional[str] = operational(None)  # None: the Ray cluster on this machine if one runs, else a new one
    worker_cpus: float = operational(0.5)  # CPUs per condensation actor (fractional: evaluation tasks not starved)
    eval_cpus: float = operational(1.0)  # CPUs per evaluation task
    eval_gpus: float = operational(1.0)  # GPUs per evaluation task when the cluster has GPUs (0.5: two share one)
    max_restarts: int = operational(3)  # a dead actor is restarted this often; each restart reloads its checkpoint
    # A worker whose node was lost: how long Ray may take to place it again before the run fails
    # naming the resources it needs (autoscaling clusters: the time to bring up a node)
    restart_wait_s: float = operational(300.0)
    wait_for_gpus_s: float = operational(0.0)  # device=cuda: wait this long for GPU nodes (autoscaling) before failing

    def __post_init__(self) -> None:
        if not 0 < self.eval_gpus <= 1:
            raise ConfigError(f"ray.eval_gpus={self.eval_gpus} must be in (0, 1]: the share of a GPU each evaluation "
                              "task holds (device=cpu evaluates without GPUs)")


@dataclass
class DiagnosticsConfig:
    """Moment gaps of the synthetic (and initial) set to the real data, in summary.json."""

    moments: bool = operational(True)
    encoders: int = operational(3)  # fresh random encoders, never used for matching
    real_per_class: int = operational(256)


@dataclass
class TrackingConfig:
    """Experiment tracking, off by default; the records are summary.json's (``pipeline/results/tracking.py``)."""

    tensorboard: bool = operational(False)  # TensorBoard event files in RUN_DIR/tensorboard (needs `tensorboard`)
    mlflow: bool = operational(False)  # an MLflow run in a local file store (needs `mlflow-skinny`)
    mlflow_uri: str | None = operational(None)  # the tracking URI; None: RUN_DIR/mlruns (local runs only)
    experiment: str | None = operational(None)  # MLflow experiment name; None: the preset


@dataclass
class AugmentConfig(AugmentSpec):
    """models.AugmentSpec with its choices typed, so a wrong op is refused naming its key. What
    to apply, in the released order: flip (if on), colour (if on), ONE op of ``geometric``
    (crop | scale | rotate | flip), cutout (if on)."""

    flip: bool = False  # mirror with probability 0.5, independent of the op (DSA's flip flag)
    color: bool = True  # brightness, saturation, contrast
    geometric: list[GeometricOp] = field(default_factory=lambda: [GeometricOp.crop])  # ONE of these per draw
    op_per: OpPer = OpPer.group  # who draws the op: group (each class / image its own) | batch (one per call)
    cutout: bool = True


def released_eval_augment() -> AugmentConfig:
    """The released low-resolution evaluation augmentation (color_crop_flip_scale_rotate minus
    cutout): flip p 0.5 per image, colour, then ONE of crop/scale/rotate per mini-batch."""
    return AugmentConfig(flip=True, color=True, geometric=["crop", "scale", "rotate"], op_per="batch", cutout=False)


@dataclass
class EvalConfig:
    """How a set is judged: networks trained from scratch on it, tested on the real test split."""

    runs: int = operational(3)  # models trained from scratch per architecture; 0 skips evaluation
    archs: list[str] = operational(factory=lambda: ["convnet3"])
    epochs: Optional[int] = operational(1000)  # None: IDC's table on the decoded images per class (ImageNet)
    lr: float = operational(0.01)
    momentum: float = operational(0.9)
    weight_decay: float = operational(0.0005)
    batch_size: int = operational(64)
    # dsa (low-resolution sets: the augment section below) | imagenet (RandomResizedCrop 0.5-1,
    # flip, colour jitter 0.4, PCA lighting 0.1)
    recipe: Recipe = operational(Recipe.dsa)
    cutmix_prob: float = operational(0.5)  # CutMix (lambda ~ Beta(1, 1)) on this fraction of mini-batches
    test_every: int = operational(100)  # epochs between test-set evaluations (the last epoch is always tested)
    # torch.compile the model: auto = from 3000 optimizer steps on a machine that can compile
    # (ConvNet-3 on CIFAR-10 IPC 10: 1000 epochs = 7000 steps) | true | false
    compile: AutoSwitch = operational("auto")
    precision: Precision = operational(Precision.fp32)  # bf16: bf16 convolutions, fp32 weights, loss, norms
    # recipe dsa, per image: released color_crop_flip_scale_rotate minus cutout (CutMix is on)
    augment: AugmentConfig = operational(factory=released_eval_augment)

    def __post_init__(self) -> None:
        _at_least(self, "eval.", 0, "runs")
        _at_least(self, "eval.", 1, "epochs", "batch_size", "test_every")
        _check_switch("eval.compile", self.compile)
        if not 0 <= self.cutmix_prob <= 1:
            raise ConfigError(f"eval.cutmix_prob={self.cutmix_prob} must be in [0, 1]")
        _check_archs("eval.archs", self.archs)


@dataclass
class RunConfig:
    """Every key of a run. Top-level keys are the condensation engine's settings (what it reads
    of them: ``method/spec.py``'s ``CondenseSpec.of``)."""

    preset: str = shaping("custom")  # the configs/<preset>.yaml this run started from
    # m3d (kernel=linear is DM) | init (M3D's starting set, `init` tiled at `factor`, no matching:
    # what the matching adds is m3d minus init) | random | herding (real images chosen on
    # random-encoder features) | whole (train on the whole training set: the upper bound; ipc unused)
    method: Method = shaping(Method.m3d)
    seed: int = shaping(0)
    device: Device = operational(Device.auto)
    out_dir: str = operational("runs")  # a local path or any fsspec URL (s3://bucket/runs)
    run_name: str = operational("${preset}_${method}_${kernel}_ipc${ipc}_s${seed}")

    ipc: int = shaping(10)  # stored synthetic images per class
    factor: int = shaping(2)  # multi-formation l: each stored image holds l x l training images
    # mix_first: the first ipc*l*l images of each class in dataset order, tiled: the released
    # code's init (its in-memory loader's class_sample returns a class's first images); the
    # low-resolution presets (MNIST, Fashion-MNIST, SVHN, CIFAR-10/100) set it.
    # mix: a seeded random sample of ipc*l*l real images of each class, tiled.
    init: Init = shaping(Init.mix)
    iterations: int = shaping(10000)
    ipm: int = shaping(5)  # iterations per random encoder
    kernel: Kernel = shaping(Kernel.gaussian)  # gaussian (M3D) | linear (= DM) | polynomial
    estimator: Estimator = shaping(Estimator.biased)  # biased (V-statistic, as released) | unbiased
    # SGD on the pixels, momentum below. None (default): lr = ipc, as some released presets, because
    # each image's gradient scales as 1/(ipc*factor^2), so the lr that fits IPC 1 under-steps at
    # IPC 10 and 50 (BENCHMARKS.md, "CIFAR-10"). A preset may fix it from its own measured curve
    # (mnist 1, digits 0.3) or the paper's (ImageNet: 0.1).
    lr: float | None = shaping(None)
    momentum: float = shaping(0.5)
    batch_real: int = shaping(128)  # real images per class per iteration
    # reference: C per-class SGD steps sharing one momentum buffer (released code)
    # batched: one SGD step per iteration on the sum of the class losses (paper)
    update_mode: UpdateMode = shaping(UpdateMode.reference)
    chunk_classes: int = operational(0)  # classes per encoder forward; 0: the fastest that fits (exact either way)
    precision: Precision = shaping(Precision.fp32)  # bf16: autocast of the encoder forwards (MMD and images fp32)
    # torch.compile the encoder: ~2x per iteration on CPU after 20-60 s of compiling.
    # auto: when iterations >= 500 and a C++ compiler (CPU) or a GPU is there | true | false
    compile: AutoSwitch = shaping("auto")
    log_every: int = operational(10)  # record the loss (and sync the workers' progress) every N iterations

    workers: Optional[int] = operational(None)  # None: one per GPU of the Ray cluster (in-process without one)
    backend: Backend = operational(Backend.auto)  # auto: local (in-process) for one worker, else ray
    checkpoint_every: int = operational(500)  # iterations between checkpoints under OUT_DIR/RUN_NAME (0: end only)
    # Store the set every N iterations (0: never) as RUN_DIR/snapshots/it<t>, each loadable with
    # SyntheticSet.load: what the released code's selection evaluates (it tests its set every 500
    # iterations and keeps the best; pipeline/reproduce.py does the same from the snapshots).
    snapshot_every: int = operational(0)
    # Rerun of a finished run: evaluate its synthetic set again. Runs recorded earlier under the
    # same eval settings (RUN_DIR/evals/) are read, not trained again; delete evals/ to retrain.
    reevaluate: bool = operational(False)

    ray: RayConfig = operational(factory=RayConfig)
    encoder: EncoderConfig = shaping(factory=EncoderConfig)
    # Siamese DSA during matching: one draw per class per iteration, the same for its real and
    # synthetic images. Default = the released "color_crop_cutout": colour, crop (integer
    # translation) always, cutout always; geometric [crop, scale, rotate, flip] is our old
    # "color_onegeom_cutout".
    augment: AugmentConfig = shaping(factory=AugmentConfig)
    data: DataConfig = shaping(factory=DataConfig)
    diagnostics: DiagnosticsConfig = operational(factory=DiagnosticsConfig)
    eval: EvalConfig = operational(factory=EvalConfig)
    tracking: TrackingConfig = operational(factory=TrackingConfig)

    def __post_init__(self) -> None:
        _at_least(self, "", 1, "ipc", "factor", "iterations", "ipm", "batch_real", "log_every", "workers")
        if self.lr is None:
            self.lr = float(self.ipc)
        _at_least(self, "", 0, "checkpoint_every", "snapshot_every", "chunk_classes")
        _check_switch("compile", self.compile)
        _check_archs("encoder.arch", [self.encoder.arch])
        if self.eval.recipe == "imagenet" and self.data.channels not in (None, 3):
            raise ConfigError(f"eval.recipe=imagenet needs RGB images, data.channels={self.data.channels}; "
                              "use eval.recipe=dsa")

    @property
    def stored_factor(self) -> int:
        """The multi-formation factor of the stored set: ``factor`` for M3D and its starting set
        (``init``); 1 for the selection baselines and the whole set, which store real images as they are."""
        return self.factor if self.method in ("m3d", "init") else 1

    @property
    def labels(self) -> torch.Tensor:
        """The class of every stored synthetic image, class-major: (num_classes * ipc,) int64."""
        return class_major_labels(range(self.data.num_classes), self.ipc)


def _at_least(section: Any, prefix: str, low: int, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if value is not None and value < low:
            raise ConfigError(f"{prefix}{key}={value} must be >= {low}")


def _check_switch(key: str, value: Any) -> None:
    if value not in ("auto", True, False):
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: auto, true, false")


def _check_archs(key: str, archs: list[str]) -> None:
    models = list_models()
    for arch in archs:
        if arch not in models:
            raise ConfigError(f"{key}: unknown architecture {arch!r}; choose from: {', '.join(models)}")


def dotted(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"eval.epochs": 300, ...}``: its leaves under their dotted keys, the
    command line's names."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def shaping_values(section: Any) -> dict:
    """The keys of ``section`` (a config dataclass) that shape the synthetic set, as plain
    values, nested like the config: what the fingerprint hashes."""
    out = {}
    for f in dataclasses.fields(section):
        if not f.metadata.get("shapes_set", True):
            continue
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value) and _is_schema(value):
            out[f.name] = shaping_values(value)
        elif dataclasses.is_dataclass(value):  # a section from models/ (AugmentSpec): every field counts
            out[f.name] = {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
        else:
            out[f.name] = _plain(value)
    return out


def _is_schema(value: Any) -> bool:
    return any("shapes_set" in f.metadata for f in dataclasses.fields(value))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def fingerprint(cfg: RunConfig) -> str:
    """16 hex digits identifying what the synthetic set depends on."""
    return hashlib.sha256(json.dumps(shaping_values(cfg), sort_keys=True).encode()).hexdigest()[:16]
