"""The single-process M3D condensation engine (what every Ray worker calls).

One ``Condenser`` owns the synthetic images of some classes. Each ``step()``:
  1. builds (or reuses) the random encoder of iteration t, seeded from (seed, t // ipm);
  2. draws each class's real batch from (seed, class, t) and each class's augmentation
     from the row of a (seed, t) table, so the step is the same however classes are split;
  3. sends the real images of *all* its classes through one no-grad encoder forward and the
     decoded synthetic images through one more (instance norm makes that identical to the
     reference's per-class forward of [real; synthetic]);
  4. computes one MMD^2 per class and updates the pixels, then clamps them to [0, 1].

Update modes (``update_mode``):
  reference  The released code loops over the C classes of the dataset and after each
             class's backward does one SGD step on the single synthetic tensor, whose one
             momentum buffer keeps moving every class's rows on the other C - 1 steps. A
             class's rows see a zero gradient on those steps, so their trajectory has a
             closed form: k "drift" steps (k = the class's position), its own gradient step,
             then C - 1 - k drift steps. We replay exactly that per block of rows, with the
             gradient evaluated where the sequential loop evaluates it (after the first k
             drifts), but for all classes in one batched forward. Results match the
             sequential loop to float rounding (tests/test_engine.py).
  batched    The paper's description: one SGD step per iteration on sum_c MMD^2_c. About half
             the effective step size of `reference` for momentum 0.5.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from m3d_condense.kernels import mmd2
from m3d_condense.models import NUM_UNIFORMS, augment, create_model, decode, mix_init
from m3d_condense.pipeline.data import ClassCache
from m3d_condense.pipeline.data.labeled import class_major_labels
from m3d_condense.pipeline.method.compute import autocast, compiled_call, synchronize, use_compile
from m3d_condense.pipeline.method.memory import classes_per_forward
from m3d_condense.pipeline.method.seeding import derive_seed, generator
from m3d_condense.pipeline.method.spec import CondenseSpec


def build_encoder(s: CondenseSpec, index: int, stream: str = "encoder") -> torch.nn.Module:
    """The random encoder number ``index`` (= t // ipm) of ``stream`` ("encoder" for matching;
    baselines and diagnostics draw from their own streams). Built on the CPU under its own seed
    so that every worker and every device gets the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(s.seed, stream, index))
        net = create_model(s.arch, s.data.channels, s.data.num_classes, s.data.image_size, s.width)
    return net.train()


COMPILE_AUTO_ITERATIONS = 500  # from here on the one-off compile (20-60 s) is a small part of the run


def compiles_encoder(s: CondenseSpec) -> bool:
    """``compile``, with auto decided by the run's length and whether this machine can compile."""
    return use_compile(s.compile, s.iterations, COMPILE_AUTO_ITERATIONS)


def initial_images(cache: ClassCache, classes: Sequence[int], s: CondenseSpec) -> torch.Tensor:
    """The starting synthetic set, class-major (len(classes) * ipc, C, H, W): per class,
    ipc * factor^2 real images tiled factor x factor into ipc stored images. ``init: mix_first``
    takes the class's first images in dataset order, as the released code does; ``mix`` a random
    sample of the class drawn from (seed, "init", class)."""
    n = s.ipc * s.factor**2

    def sample(c: int) -> torch.Tensor:
        return cache.first(c, n) if s.init == "mix_first" else cache.random_subset(c, n, s.seed, stream="init")

    return torch.cat([mix_init(sample(c), s.factor) for c in classes])


def augment_uniforms(s: CondenseSpec, iteration: int) -> torch.Tensor:
    """(num_classes, NUM_UNIFORMS): row c drives class c's siamese augmentation at ``iteration``."""
    return torch.rand(s.data.num_classes, NUM_UNIFORMS, generator=generator(s.seed, "augment", iteration))


# Classes per forward chosen by timing, per (shape, mode, device): a process tunes each once.
_TUNED_CHUNKS: dict[tuple, int] = {}
MAX_CHUNK_CANDIDATES = 4


def chunk_candidates(classes: int, largest: int) -> list[int]:
    """Up to MAX_CHUNK_CANDIDATES divisors of ``classes`` (no ragged last chunk, no extra
    compiled shape) from 1 to the largest that fits, spread evenly on a log scale."""
    divisors = [d for d in range(1, largest + 1) if classes % d == 0]
    if len(divisors) <= MAX_CHUNK_CANDIDATES:
        return divisors
    picks = {round(i * (len(divisors) - 1) / (MAX_CHUNK_CANDIDATES - 1)) for i in range(MAX_CHUNK_CANDIDATES)}
    return [divisors[i] for i in sorted(picks)]


def drift(mu: float, n: int) -> float:
    """sum_{j=1..n} mu^j: how far n zero-gradient momentum steps move, in units of lr * buffer."""
    return sum(mu**j for j in range(1, n + 1))


class Condenser:
    """Synthetic images of ``classes`` (global class indices), updated one iteration per ``step``,
    as ``spec`` (``CondenseSpec.of`` the run's config) says."""

    def __init__(self, spec: CondenseSpec, cache: ClassCache, classes: Sequence[int],
                 device: torch.device | str = "cpu", memory_share: float = 1.0):
        self.s, self.cache, self.device = spec, cache, torch.device(device)
        self.classes = [int(c) for c in classes]
        s = spec
        self.images = initial_images(cache, self.classes, s).to(self.device)
        self.momentum = torch.zeros_like(self.images)
        self.iteration = 0
        self._encoder_index, self._encoder = None, None
        self.compiled = compiles_encoder(s)
        self._embed = compiled_call("embed", self.compiled)
        # The memory bound (within memory_share of the free memory, when processes beside this one
        # size their steps from the same memory); with chunk_classes=0 the first step times a few
        # sizes up to it.
        self.chunk = classes_per_forward(s, len(self.classes), self.device, s.chunk_classes, memory_share)
        self._chunk_tuned = s.chunk_classes > 0
        # Per-row constants of the reference replay: class c (position c in the released loop's
        # class order) drifts c steps before its gradient step and C - 1 - c after it.
        mu, lr, last = s.momentum, s.lr, s.data.num_classes - 1
        self._pre_shift = self._per_row([lr * drift(mu, c) for c in self.classes])
        self._grad_decay = self._per_row([mu ** (c + 1) for c in self.classes])  # c drifts, then the step's own mu
        self._post_shift = self._per_row([lr * drift(mu, last - c) for c in self.classes])
        self._post_decay = self._per_row([mu ** (last - c) for c in self.classes])

    def _per_row(self, per_class: list[float]) -> torch.Tensor:
        """One value per class -> (rows, 1, 1, 1), broadcastable over the stored images."""
        values = torch.tensor(per_class, dtype=torch.float32).repeat_interleave(self.s.ipc)
        return values.to(self.device).view(-1, 1, 1, 1)

    @property
    def labels(self) -> torch.Tensor:
        """Label of every stored image, (len(classes) * ipc,)."""
        return class_major_labels(self.classes, self.s.ipc)

    def encoder(self, iteration: int) -> torch.nn.Module:
        index = iteration // self.s.ipm
        if index != self._encoder_index:
            self._encoder_index = index
            self._encoder = build_encoder(self.s, index).requires_grad_(False).to(self.device)
        return self._encoder

    def class_losses(self, images: torch.Tensor, iteration: int, classes: Sequence[int] | None = None) -> torch.Tensor:
        """MMD^2 per class, (len(classes),), between the real batch of ``iteration`` and
        ``images`` (the stored synthetic images of ``classes``, default all of this worker's).
        All classes share one batched forward for the real images (no grad) and one for the
        synthetic ones."""
        s = self.s
        classes = self.classes if classes is None else list(classes)
        real = self.cache.sample(classes, s.batch_real, s.seed, iteration).to(self.device)
        syn = decode(images, s.factor)
        sizes_real = self.cache.batch_sizes(classes, s.batch_real)
        n_syn = s.ipc * s.factor**2
        position = torch.arange(len(classes))
        groups_real = position.repeat_interleave(torch.tensor(sizes_real))
        groups_syn = position.repeat_interleave(n_syn)
        u = augment_uniforms(s, iteration)[classes]
        encoder = self.encoder(iteration)
        # Real images need no gradient: a separate no-grad forward saves the backward through
        # them and their activations. Per-image norm and per-group augmentation make the split exact.
        with torch.no_grad(), self._autocast():
            f_real = self._embed(encoder, augment(s.data.normalize(real), u, groups_real, s.augment)).float()
        with self._autocast():
            f_syn = self._embed(encoder, augment(s.data.normalize(syn), u, groups_syn, s.augment)).float()
        f_syn = f_syn.view(len(classes), n_syn, -1)
        if len(set(sizes_real)) == 1:
            return mmd2(f_syn, f_real.view(len(classes), sizes_real[0], -1), s.kernel, s.estimator)
        parts = torch.split(f_real, sizes_real)
        return torch.stack([mmd2(f_syn[i], p, s.kernel, s.estimator) for i, p in enumerate(parts)])

    def _autocast(self):
        """bf16 autocast of the encoder when ``precision=bf16``; the MMD stays in fp32."""
        return autocast(self.device, self.s.precision)

    def losses_and_grad(self, at: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class losses at images ``at`` and their gradient, ``self.chunk`` classes per
        forward/backward. A class's loss depends only on its own rows, so chunking is exact and
        bounds the activations held for the backward."""
        rows = self.s.ipc
        losses, grads = [], []
        for start in range(0, len(self.classes), self.chunk):
            part = at[start * rows:(start + self.chunk) * rows].detach().requires_grad_(True)
            loss = self.class_losses(part, t, self.classes[start:start + self.chunk])
            (grad,) = torch.autograd.grad(loss.sum(), part)
            losses.append(loss.detach())
            grads.append(grad)
        return torch.cat(losses), torch.cat(grads)

    def tune_chunk(self) -> int:
        """The fastest number of classes per forward among ``chunk_candidates``: each size runs
        a throwaway forward and backward of its first chunk at the current iteration (warm-up,
        then timed; nothing is updated), compared per class. Cached per shape, mode and device."""
        s = self.s
        key = (s.arch, s.width, s.data.channels, s.data.image_size, s.ipc, s.factor, s.batch_real,
               str(s.precision), self.compiled, str(self.device), len(self.classes), self.chunk)
        if key not in _TUNED_CHUNKS:
            per_class = {}
            for k in chunk_candidates(len(self.classes), self.chunk):
                part = self.images[:k * s.ipc].detach().requires_grad_(True)
                for _ in range(2):  # warm-up (and compile), then the timed run
                    synchronize(self.device)
                    start = time.perf_counter()
                    torch.autograd.grad(self.class_losses(part, self.iteration, self.classes[:k]).sum(), part)
                    synchronize(self.device)
                per_class[k] = (time.perf_counter() - start) / k
            _TUNED_CHUNKS[key] = min(per_class, key=per_class.get)
        return _TUNED_CHUNKS[key]

    def step(self) -> torch.Tensor:
        """Run iteration ``self.iteration``; returns the per-class losses (detached, CPU)."""
        s, t = self.s, self.iteration
        if not self._chunk_tuned:
            self.chunk, self._chunk_tuned = self.tune_chunk(), True
        if s.update_mode == "reference":
            at = self.images - self._pre_shift * self.momentum
            losses, grad = self.losses_and_grad(at, t)
            with torch.no_grad():
                buf = self._grad_decay * self.momentum + grad
                images = at.detach() - s.lr * buf - self._post_shift * buf
                self.momentum = self._post_decay * buf
        else:  # batched
            losses, grad = self.losses_and_grad(self.images, t)
            with torch.no_grad():
                self.momentum = s.momentum * self.momentum + grad
                images = self.images - s.lr * self.momentum
        self.images = images.clamp_(0.0, 1.0)
        self.iteration += 1
        return losses.detach().cpu()

    def state_dict(self) -> dict:
        return {"images": self.images.cpu(), "momentum": self.momentum.cpu(), "iteration": self.iteration,
                "classes": list(self.classes)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["classes"]) != self.classes:
            raise ValueError(f"checkpoint holds classes {state['classes']}, this condenser owns {self.classes}")
        self.images = state["images"].to(self.device)
        self.momentum = state["momentum"].to(self.device)
        self.iteration = int(state["iteration"])


def step_until(condenser: Condenser, until: int, log_every: int = 1, last: int | None = None) -> list[tuple[int, list[float]]]:
    """Step ``condenser`` to iteration ``until``; returns [(t, per-class losses)] of every
    ``log_every``-th iteration and of the run's last one (``last``, default ``until``: a worker
    that runs in parts passes the run's total)."""
    history = []
    while condenser.iteration < until:
        t = condenser.iteration
        losses = condenser.step()
        if t % log_every == 0 or condenser.iteration == (last or until):
            history.append((t, losses.tolist()))
    return history
