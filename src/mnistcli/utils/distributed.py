"""Training across processes started by torchrun: DistributedDataParallel over gloo (CPU) or nccl (CUDA).

One process per device; rank 0 alone writes the run folder. `data.batch_size` is the global batch of one optimizer
step: every rank takes a contiguous slice of the same global batch a single process would train on.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import RunFailure, UserError

log = logging.getLogger(__name__)

RANK0_GRACE = 20.0  # s: how long a rank other than 0 waits for rank 0 to report an error both met
STOP_CHECK_EVERY_CUDA = 8  # steps between two stop agreements on CUDA: each one waits for every rank


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # the ranks on this machine

    @property
    def one_machine(self) -> bool:
        """Whether every rank runs on this machine (what `train --nproc N` starts)."""
        return self.local_size == self.size

    @property
    def active(self) -> bool:
        """Whether more than one process trains."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    def part(self, n: int) -> slice:
        """This rank's contiguous share of n items; shares differ by at most one, earlier ranks take the extra."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


SINGLE = World()


class ShardBatches(Sampler[list[int]]):
    """A DataLoader's batches under torchrun: this rank's contiguous slice of each global batch of the epoch order
    every rank shares (`order`: loaders.EpochOrder)."""

    def __init__(self, order: Any, batch_size: int, drop_last: bool, world: World) -> None:
        self.sampler, self.batch_size, self.drop_last, self.world = order, batch_size, drop_last, world

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.indices()
        for i in range(len(self)):
            batch = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield batch[self.world.part(len(batch))].tolist()


WORLD_VARIABLES = ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun gives every rank


def launched() -> World:
    """The world torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK); a single one otherwise.
    Variables left in a shell that describe no world torchrun made are one line, before anything waits on them."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise UserError(f"WORLD_SIZE={raw!r} in the environment is not a number of processes; unset it") from None
    if size <= 1:
        return SINGLE
    missing = [name for name in WORLD_VARIABLES if not os.environ.get(name)]
    rank = os.environ.get("RANK", "")
    if missing or not rank.isdigit() or int(rank) >= size:
        what = f"{', '.join(missing)} unset" if missing else f"RANK={rank!r} is not a rank of {size}"
        raise UserError(
            f"WORLD_SIZE={size} is set in the environment but {what}: these are torchrun's, left in the shell; "
            "unset WORLD_SIZE and RANK to train in one process, or start several with --nproc N or torchrun"
        )
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return World(int(rank), size, int(os.environ.get("LOCAL_RANK", "0")), int(local) if local.isdigit() else 1)


def follow_parent(signum: int = signal.SIGTERM, every_s: float = 0.5) -> None:
    """Under torchrun: stop this rank with one `signum` when the process that started it dies, even by SIGKILL, so
    ranks never train on as orphans holding the run folder; a stop by SIGTERM writes interrupted.pt as any stop
    does. A watcher thread sees the parent change (the rank is handed to another process). Linux's parent-death
    signal is not used: it fires once per exiting thread of the parent, and a second signal stops a run at once."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os.kill(os.getpid(), signum)

    threading.Thread(target=watch, name="mnistcli-parent-watch", daemon=True).start()


def device_name(name: str, world: World) -> str:
    """`auto` (or plain `cuda`) under torchrun is this process's own GPU, cuda:LOCAL_RANK, when there is one."""
    if world.active and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return name


def start(world: World, device: torch.device, timeout_s: float) -> None:
    """Join the process group: nccl on CUDA, gloo elsewhere; a collective that waits `timeout_s` fails."""
    if not world.active or dist.is_initialized():
        return
    follow_parent()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    global _CPU_GROUP
    _CPU_GROUP = dist.new_group(backend="gloo") if backend != "gloo" else None
    log.info("rank %d of %d on %s (%s)", world.rank, world.size, device, backend)


_CPU_GROUP: Any = None  # a gloo group beside nccl: stop flags agree on the CPU without a CUDA sync


def stop() -> None:
    """Leave the process group (after a run, or when it failed)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, world: World) -> None:
    """The global batch must split evenly across the ranks."""
    if world.active and batch_size % world.size:
        raise UserError(
            f"data.batch_size {batch_size} does not split evenly across {world.size} processes: it is the global "
            f"batch of one step; use a multiple of {world.size}"
        )


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums of the values over all ranks, in float64 (exact for counts below 2**53)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """Whether the flag is true on some rank (a CPU collective: every rank must call it alike)."""
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CPU_GROUP)
    return bool(t.item())


def gather(obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's object, on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StopRequest:
    """A request to stop after the current step, made once per run. `ask` (a signal handler) records this process's
    signal; `asked` is this process's own request (no collective); `agreed()` whether any rank asked: in one process
    the same, under torchrun agreed by every rank every `every` calls, so all stop after the same step (every rank
    must call it alike), and once agreed it stays so."""

    def __init__(self, world: World | None = None, every: int = 1) -> None:
        self.world, self.every, self.calls = world or SINGLE, every, 0
        self.signum: int | None = None  # the first signal this process received
        self._agreed = False

    @property
    def asked(self) -> bool:
        """Whether this process was asked to stop."""
        return self.signum is not None

    def ask(self, signum: int) -> None:
        """Ask for a stop (from a signal handler: no collective here)."""
        if self.signum is None:
            self.signum = signum

    def agreed(self) -> bool:
        """Whether the run stops after this step."""
        if not self.world.active:
            return self.asked
        if not self._agreed:
            self.calls += 1
            self._agreed = self.calls % self.every == 0 and any_rank(self.asked)
        return self._agreed


class RankExit(UserError):
    """How a rank other than 0 ends when rank 0 reports why (an error, a stop): no line of its own, the same exit
    code."""

    def __init__(self, exit_code: int) -> None:
        super().__init__("")
        self.exit_code = exit_code


def lost_rank(world: World, exc: BaseException) -> RunFailure:
    """A collective that failed: another rank died or stopped answering within train.dist_timeout."""
    text = " ".join(str(exc).split())
    detail = re.sub(r"^\[[^]]*\] ?", "", text).split(". ")[0][:120] or type(exc).__name__  # no source path
    return RunFailure(
        f"rank {world.rank} of {world.size}: lost contact with another rank ({detail}); stopping "
        "(the launcher names the rank that failed)"
    )


def _lost_contact(exc: BaseException) -> bool:
    """Whether an error is a collective that failed (a peer gone, a timeout), not a bug of the step itself."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return any(k in text for k in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out"))


@contextlib.contextmanager
def rank0_speaks(world: World) -> Iterator[None]:
    """Under torchrun rank 0 alone logs more than warnings and reports errors; the others end with its exit code."""
    if not world.main:
        logging.getLogger("mnistcli").setLevel(logging.WARNING)
    try:
        yield
    except UserError as exc:
        if world.main or isinstance(exc, RankExit):
            raise
        if exc.own:  # not what every rank finds alike (a config): this rank says it
            raise UserError(f"rank {world.rank} of {world.size}: {exc}") from None
        _wait_for_rank0()
        raise RankExit(exc.exit_code) from None


def _wait_for_rank0() -> None:
    """Before a rank other than 0 leaves over an error every rank meets, give rank 0 the time to say it: a rank that
    exits first makes the agent stop the others, rank 0 too, often before its line is written. The agent's stop, once
    rank 0 has failed, ends this rank silently; past RANK0_GRACE it leaves by itself."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(RANK0_GRACE)


@contextlib.contextmanager
def joined(world: World, cfg: Any, device: torch.device) -> Iterator[None]:
    """The body runs as one rank of a torchrun run (nothing to do in one process): join the group, report errors
    from rank 0 alone, leave the group. A collective that fails (a rank died, or `train.dist_timeout` passed) is one
    line on each surviving rank."""
    if not world.active:
        yield
        return
    try:
        with rank0_speaks(world):
            check_batch(cfg.data.batch_size, world)
            if cfg.train.on_nan == "skip":  # a rank skipping its step would leave the others' gradients unmatched
                raise UserError("train.on_nan: skip works in one process only; under torchrun use stop (the default)")
            start(world, device, cfg.train.dist_timeout)
            yield
    except (RuntimeError, dist.DistError) as exc:
        if _lost_contact(exc):
            raise lost_rank(world, exc) from None
        raise
    finally:
        try:
            stop()
        except (RuntimeError, dist.DistError):  # a group whose peers are gone: nothing left to close cleanly
            pass


def train_sums(tr: dict[str, Any], device: torch.device) -> None:
    """Turn one rank's training sums of an epoch (`train_one_epoch`'s result) into all ranks' sums, in place."""
    part = tr["partial"]
    loss_sum, correct, seen = all_sum([part["loss_sum"], part["correct"], part["seen"]], device)
    part.update(loss_sum=loss_sum, correct=int(correct), seen=int(seen))
    tr.update(loss=loss_sum / max(seen, 1), accuracy=correct / max(seen, 1), n=int(seen))


def launch(nproc: int, args: list[str]) -> int:
    """`train --nproc N`: torchrun's agent, in this process, runs `mnistcli train ARGS` as N ranks; the exit code.

    In this process rather than an exec of `torchrun`, so that a stop exits 130/143 as a single process does and a
    failed rank is named in one line instead of torchrun's traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its notes; ranks and we speak
    # --standalone: a rendezvous on a free local port, so two runs on one machine never collide
    try:
        run(parse_args(["--standalone", "--nproc_per_node", str(nproc), "-m", "mnistcli", "train", *args]))
    except SignalException as stop:  # passed on to the ranks: rank 0 has written interrupted.pt and said so
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        # the cause: a rank killed by a signal other than SIGTERM (it says nothing itself, so it is named), else the
        # first rank that exited with its own code (it has printed its line: a bad config is exit 2), and SIGTERM
        # last, which the agent sends to the ranks left once one has failed
        rank, first = min(
            failed.failures.items(),
            key=lambda kv: (kv[1].exitcode == -signal.SIGTERM, kv[1].exitcode >= 0, kv[1].timestamp, kv[0]),
        )
        if first.exitcode >= 0:
            return first.exitcode
        killed = f"rank {rank} of {nproc} was killed by {first.signal_name()}; the other ranks stopped"
        raise RunFailure(killed) from None
    return 0
