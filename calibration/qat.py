"""Quantization-aware training: learn the scales (LSQ) and the weights behind a recipe by distilling the
float model, then write an ordinary QuantizedCheckpoint that the exporters consume unchanged.

The student is the float architecture whose quantized weights are recomputed on every step from a latent
float weight and a learned scale (`formats.fake_quantize`: rounding with a straight-through gradient, the
LSQ gradient for the scale). Scales are learned in log space (one learning rate fits layers whose scales
differ by orders of magnitude) and rounded to bf16 with a straight-through estimator, so training sees
exactly the grid the checkpoint will store. Training starts from the PTQ checkpoint, where the student
equals the PTQ model bit for bit.

The loss is KL(teacher || student) on next-token distributions of the frozen float model: by default its
top-k logits per position renormalised over those k tokens (the Gemma 3 report's sampled distillation),
which lets the student evaluate only the LM-head rows those tokens need; `top_k=0` uses the full vocabulary.

A step trains on `batch` sequences (gradients accumulated one sequence at a time, so memory is that of one).
Under `torchrun` (torch.distributed initialised) the processes split each step's sequences and
DistributedDataParallel averages their gradients: N processes follow the loss curve of one process with the
same `batch`, within float summation order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from gemma_edge.model.atomic import atomic_dir
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import DecoderLayer, Gemma, attention_mask, heads_first, sdpa
from gemma_edge.model.loader import LoadedModel
from gemma_edge.model.swap import swap_modules

from .checkpoint import QuantizedCheckpoint
from .formats import QTensor, fake_quantize, quantize_with
from .ptq import float_weights
from .recipe import EMBEDDING, LM_HEAD

STATE_FILE = "qat_state.pt"
RUN_FILE = "qat_run.json"


@dataclass(frozen=True)
class QATConfig:
    """`lr` moves the latent weights, `scale_lr` the log-scales (Adam). `top_k` teacher logits per position
    (0: the full vocabulary). `train_embedding` also trains the lookup table when it is not the LM head's.
    `batch` sequences per step, summed over all processes of a distributed run."""

    steps: int = 300
    seq_len: int = 256
    batch: int = 1
    lr: float = 1e-5
    scale_lr: float = 1e-3
    top_k: int = 128
    warmup: int = 10
    train_weights: bool = True
    train_embedding: bool = False
    grad_checkpointing: bool = False
    save_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.seq_len < 2 or self.top_k < 0 or self.save_every < 1 or self.batch < 1:
            raise GemmaEdgeError(f"invalid QAT settings {self}: steps, save_every, batch >= 1, seq_len >= 2, top_k >= 0")


def bf16_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest bf16 value forward, identity backward: the checkpoint stores bf16 scales."""
    return x + (x.to(torch.bfloat16).float() - x).detach()


class FakeQuant(nn.Module):
    """The learnable quantizer of one weight, initialised from its PTQ QTensor. The scale is
    sign * exp(log_scale); the sign is fixed (imported Q4_0 grids may have negative scales)."""

    def __init__(self, q: QTensor):
        super().__init__()
        self.fmt = q.fmt
        self.log_scale = None if q.scale is None else nn.Parameter(q.scale.float().abs().log())
        self.register_buffer("sign", None if q.scale is None else torch.where(q.scale < 0, -1.0, 1.0))
        self.register_buffer("zero_point", q.zero_point)

    def scale(self, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        if self.log_scale is None:
            return None
        s = self.sign * self.log_scale.exp()
        return bf16_ste(s if rows is None else s[rows])

    def forward(self, w: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Fake-quantize `w` (or the output rows `rows` of the weight, given as `w`)."""
        zp = self.zero_point if self.zero_point is None or rows is None else self.zero_point[rows]
        return fake_quantize(w, self.fmt, self.scale(rows), zp)

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> QTensor:
        """The integers and scales the forward pass uses, as a QTensor."""
        scale = self.scale()
        return quantize_with(w.detach().float(), self.fmt, None if scale is None else scale.detach(),
                             self.zero_point)


@torch.no_grad()
def start_on_grid(w: torch.Tensor, q: QTensor) -> torch.Tensor:
    """The latent weight QAT starts from: the float weight, moved onto `q`'s level wherever `q` does not round
    it to nearest (GPTQ's rounding, an imported grid), so that the student starts at `q`'s integers exactly."""
    latent = w.detach().float().clone()
    if q.scale is not None:  # integer grids (fp8 has no integers to keep)
        off = quantize_with(latent, q.fmt, q.scale.float(), q.zero_point).qdata != q.qdata
        latent[off] = q.dequantize().float()[off]
    return latent


class QuantWeight(nn.Module):
    """A latent float weight and its quantizer; `rows(index)` fake-quantizes only the rows it needs
    (an embedding lookup, or the LM-head rows of the teacher's top-k tokens)."""

    def __init__(self, w: torch.Tensor, q: QTensor, trainable: bool):
        super().__init__()
        self.latent = nn.Parameter(start_on_grid(w, q), requires_grad=trainable)
        self.quant = FakeQuant(q)

    def forward(self) -> torch.Tensor:
        return self.quant(self.latent)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        flat = index.reshape(-1)
        return self.quant(self.latent[flat], flat).reshape(*index.shape, -1)


class FakeQuantLinear(nn.Module):
    def __init__(self, weight: QuantWeight):
        super().__init__()
        self.weight_q = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_q())


class FrozenTable(nn.Module):
    """A table that does not train (the PTQ-dequantized embedding, or a float head)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("table", w.detach().float().clone())

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.table[index]


class SequenceAttention(nn.Module):
    """Training needs no KV cache: attend over the sequence itself, causal and (sliding) windowed."""

    def __init__(self, window: int | None):
        super().__init__()
        self.window = window

    def attend(self, q, k, v, input_pos: torch.Tensor, scale: float) -> torch.Tensor:
        q, k, v = heads_first(q, k, v)
        return sdpa(q, k, v, attention_mask(input_pos, input_pos, self.window), scale).transpose(1, 2)


class CheckpointedLayer(nn.Module):
    """Recompute a decoder layer in the backward pass instead of keeping its activations."""

    def __init__(self, layer: DecoderLayer):
        super().__init__()
        self.layer = layer
        self.is_sliding = layer.is_sliding

    def forward(self, *args):
        return checkpoint(self.layer, *args, use_reentrant=False)


class QATStudent(nn.Module):
    """The float architecture with every quantized projection a FakeQuantLinear. Norms stay frozen."""

    def __init__(self, loaded: LoadedModel, init: QuantizedCheckpoint, cfg: QATConfig):
        super().__init__()
        weights = float_weights(loaded)
        self.model = Gemma(loaded.config, max_seq_len=cfg.seq_len)
        self.model.load_state_dict(loaded.model.state_dict())
        self.model.requires_grad_(False)
        self.quantized: dict[str, QuantWeight] = {}

        def fake_quant_linear(name: str, child: nn.Module) -> nn.Module | None:
            full = f"{name}.weight"  # the LM head has its own quantizer below
            if not isinstance(child, nn.Linear) or full not in init.quantized or full == LM_HEAD:
                return None
            self.quantized[full] = QuantWeight(weights[full], init.quantized[full], cfg.train_weights)
            return FakeQuantLinear(self.quantized[full])

        swap_modules(self.model, fake_quant_linear)
        for mod in list(self.model.modules()):
            if hasattr(mod, "cache"):
                mod.cache = SequenceAttention(mod.window)
        if cfg.grad_checkpointing:
            self.model.layers = nn.ModuleList(CheckpointedLayer(layer) for layer in self.model.layers)
        shared = LM_HEAD not in init.quantized and LM_HEAD not in init.floats  # one table for both
        if EMBEDDING in init.quantized and (shared or cfg.train_embedding):
            self.embedding = QuantWeight(weights[EMBEDDING], init.quantized[EMBEDDING], cfg.train_weights)
            self.quantized[EMBEDDING] = self.embedding
        else:
            self.embedding = FrozenTable(init.dequantized_state()[EMBEDDING])
        if shared:
            self.head = self.embedding
        elif LM_HEAD in init.quantized:
            self.head = QuantWeight(weights[LM_HEAD], init.quantized[LM_HEAD], cfg.train_weights)
            self.quantized[LM_HEAD] = self.head
        else:
            self.head = FrozenTable(init.floats[LM_HEAD])
        self.model.embed_tokens = None  # `embedding` and `head` replace the float table

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding.rows(tokens)
        positions = torch.arange(tokens.shape[-1])
        return self.model.hidden(x * torch.tensor(self.model.embed_scale, dtype=x.dtype), positions)

    def forward(self, tokens: torch.Tensor, target: "TeacherTarget") -> torch.Tensor:
        return self.loss(tokens, target)  # DistributedDataParallel hooks calls of forward

    def loss(self, tokens: torch.Tensor, target: "TeacherTarget") -> torch.Tensor:
        """Mean KL(teacher || student) per position, over the teacher's tokens (top-k) or the vocabulary."""
        h = self.hidden(tokens)
        if target.index is None:
            logits = h @ self.head.rows(torch.arange(self.model.config.vocab_size)).T
        else:
            rows, inverse = torch.unique(target.index, return_inverse=True)
            logits = (h @ self.head.rows(rows).T).gather(-1, inverse)
        logp = F.log_softmax(self.model.softcap(logits), -1)
        return (target.logp.exp() * (target.logp - logp)).sum(-1).mean()

    def to_checkpoint(self, init: QuantizedCheckpoint, train_note: dict,
                      floats: dict[str, torch.Tensor] | None = None) -> QuantizedCheckpoint:
        """Integers and scales from training; everything the student did not train is `init`'s.
        `floats` (the teacher's weights) refresh the report's relative errors."""
        quantized = dict(init.quantized)
        report = {r["name"]: dict(r) for r in init.report}
        for name, qw in self.quantized.items():
            q = qw.quant.freeze(qw.latent)
            quantized[name] = q
            if name in report:
                report[name]["clip"] = "qat"
                if floats is not None:
                    w = floats[name]
                    report[name]["relative_error"] = round(((q.dequantize() - w).norm() / w.norm()).item(), 6)
        return dataclasses.replace(init, quantized=quantized, report=[report[k] for k in sorted(report)],
                                   provenance=train_note)


@dataclass
class TeacherTarget:
    """The teacher's next-token log-probabilities: [B, T, k] over `index`, or [B, T, vocab] (index None)."""

    logp: torch.Tensor
    index: torch.Tensor | None


@torch.no_grad()
def teacher_target(teacher: Gemma, tokens: torch.Tensor, top_k: int) -> TeacherTarget:
    teacher.reset_caches()
    logits = torch.cat([teacher(seq[None], torch.arange(seq.shape[-1])) for seq in tokens]).float()
    teacher.reset_caches()
    if top_k == 0:
        return TeacherTarget(F.log_softmax(logits, -1), None)
    values, index = logits.topk(top_k, dim=-1)
    return TeacherTarget(F.log_softmax(values, -1), index)


def lr_factor(step: int, cfg: QATConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def sequence_order(draw: int, n: int, seed: int) -> int:
    """Which training sequence the `draw`-th draw is (step s of a batch-b run draws s*b ... s*b + b-1): a fresh
    seeded permutation every epoch, so the order is a function of the draw alone and a resumed run sees the
    same data."""
    epoch, i = divmod(draw, n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return int(torch.randperm(n, generator=g)[i])


@dataclass(frozen=True)
class Processes:
    """This process's place in a distributed run (rank 0 of 1 without one): who trains which sequences of a
    step, and who writes files."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Processes":
        return cls(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else cls()

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def share(self, batch: int) -> range:
        """The positions within a step's batch that this process trains."""
        if batch % self.world:
            raise GemmaEdgeError(f"--batch {batch} does not split evenly over {self.world} processes; "
                                 f"use a multiple of {self.world}")
        return range(self.rank, batch, self.world)

    def from_writer(self, make):
        """`make()` run by rank 0 only and its result sent to every process (the training sequences: made
        once, not once per process)."""
        box = [make() if self.writes else None]
        if self.world > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes (each holds the mean loss of its equal share)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world


@contextlib.contextmanager
def torchrun_processes():
    """Join the process group that `torchrun` describes in the environment; without torchrun, one process.
    Yields this process's `Processes`. gloo: training runs on the CPU (the student is not placed on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield Processes.current()
        return
    dist.init_process_group("gloo")
    try:
        yield Processes.current()
        dist.barrier()  # the writer finishes its files before the others leave
    finally:
        dist.destroy_process_group()


def _optimizer(student: QATStudent, cfg: QATConfig) -> torch.optim.Optimizer:
    scales = [qw.quant.log_scale for qw in student.quantized.values() if qw.quant.log_scale is not None]
    latents = [qw.latent for qw in student.quantized.values() if qw.latent.requires_grad]
    groups = [{"params": scales, "lr": cfg.scale_lr}]
    if latents:
        groups.append({"params": latents, "lr": cfg.lr})
    return torch.optim.Adam(groups, betas=(0.9, 0.95), eps=1e-12, fused=True)


def _trainable_state(student: QATStudent) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in student.named_parameters() if v.requires_grad}


def save_state(run_dir: Path, step: int, student: QATStudent, opt: torch.optim.Optimizer,
               sequences: torch.Tensor, cfg: QATConfig, meta: dict, losses: list[float]) -> None:
    """Everything a resumed run needs, written atomically (a crash mid-save keeps the previous state).
    `meta` says how the student was initialised (recipe, init) so a resume can rebuild it."""
    with atomic_dir(run_dir, overwrite=True) as tmp:
        torch.save({"step": step, "params": _trainable_state(student), "optimizer": opt.state_dict(),
                    "sequences": sequences, "losses": losses}, tmp / STATE_FILE)
        (tmp / RUN_FILE).write_text(json.dumps({"config": dataclasses.asdict(cfg), "meta": meta, "step": step},
                                               indent=2, sort_keys=True) + "\n")


def load_run(run_dir: str | Path) -> tuple[QATConfig, dict, dict]:
    """(config, meta, state) of a saved run."""
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / RUN_FILE).read_text())
        state = torch.load(run_dir / STATE_FILE, weights_only=True)
    except FileNotFoundError as e:
        raise GemmaEdgeError(f"{run_dir}: not a QAT state folder ({Path(e.filename).name} missing); "
                             "it is written next to --out as OUT.qat-state every --save-every steps") from None
    except Exception as e:  # torch.load refuses pickled code (weights_only) with its own exception types
        raise GemmaEdgeError(f"{run_dir}: its training state is damaged or not one gemma-edge wrote ({type(e).__name__}); "
                             "start the run again without --resume") from None
    try:
        return QATConfig(**run["config"]), run["meta"], state
    except (KeyError, TypeError) as e:
        raise GemmaEdgeError(f"{run_dir / RUN_FILE}: not a gemma-edge QAT run record ({e}); start the run "
                             "again without --resume") from None


def train(loaded: LoadedModel, init: QuantizedCheckpoint, sequences: Sequence[Sequence[int]], cfg: QATConfig,
          run_dir: str | Path, resume: dict | None = None, progress: bool = True,
          meta: dict | None = None) -> QuantizedCheckpoint:
    """Distil `loaded` (the frozen teacher) into a student initialised from `init`; save state to `run_dir`
    every `cfg.save_every` steps; `resume` is `load_run`'s state (its sequences replace `sequences`).
    Returns the QAT checkpoint."""
    meta = meta or {"recipe": init.recipe.name}
    seqs = torch.tensor([list(s) for s in sequences]) if resume is None else resume["sequences"]
    if seqs.ndim != 2 or seqs.shape[1] < 2:
        raise GemmaEdgeError("QAT needs at least one training sequence of two or more tokens")
    if seqs.shape[1] > loaded.model.max_seq_len:
        raise GemmaEdgeError(f"training sequences of {seqs.shape[1]} tokens exceed the teacher's max_seq_len "
                             f"{loaded.model.max_seq_len}; load it with max_seq_len >= the sequence length")
    procs = Processes.current()
    share = procs.share(cfg.batch)
    student = QATStudent(loaded, init, cfg)
    # one gradient all-reduce per step (no_sync for all but the last sequence); the frozen weights are the
    # same in every process, so nothing but gradients is exchanged
    model = student if procs.world == 1 else DistributedDataParallel(student, forward_sync_buffers=False)
    opt = _optimizer(student, cfg)
    peak = [g["lr"] for g in opt.param_groups]
    start, losses = 0, []
    if resume is not None:
        params = dict(student.named_parameters())
        for k, v in resume["params"].items():
            params[k].data.copy_(v)
        opt.load_state_dict(resume["optimizer"])
        start, losses = resume["step"], list(resume["losses"])
    teacher = loaded.model
    cache: dict[int, TeacherTarget] = {}  # top-k targets are small: compute each sequence's once
    bar = tqdm(range(start, cfg.steps), desc=f"QAT ({init.recipe.name})", unit="step",
               disable=not (progress and procs.writes), initial=start, total=cfg.steps)
    for step in bar:
        for group, lr in zip(opt.param_groups, peak):
            group["lr"] = lr * lr_factor(step, cfg)
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for n, j in enumerate(share):
            i = sequence_order(step * cfg.batch + j, len(seqs), cfg.seed)
            tokens = seqs[i:i + 1]
            target = cache.get(i) or teacher_target(teacher, tokens, cfg.top_k)
            if cfg.top_k:
                cache[i] = target
            last = n == len(share) - 1
            with contextlib.nullcontext() if last or procs.world == 1 else model.no_sync():
                loss = model(tokens, target) / len(share)
                loss.backward()
            step_loss += loss.item()
        opt.step()
        losses.append(procs.mean(step_loss))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{opt.param_groups[-1]['lr']:.2e}")
        if procs.writes and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
            save_state(Path(run_dir), step + 1, student, opt, seqs, cfg, meta, losses)
    note = {"method": "qat", "config": dataclasses.asdict(cfg), "sequences": len(seqs),
            "tokens_per_sequence": int(seqs.shape[1]), "first_loss": losses[0] if losses else None,
            "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:]))}
    return student.to_checkpoint(init, note, float_weights(loaded))
