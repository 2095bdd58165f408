"""The Trainer: one run's model, data, optimizer and loop, with checkpoints, stop signals and progress."""
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.layers import convert_sync_batchnorm
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, get_optimizer_info, optimizer_kwargs
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3, NativeScaler, dispatch_clip_grad, distribute_bn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset
from tqdm import tqdm

from fat import models  # noqa: F401 (importing it registers the FAT models with timm)
from fat.data import EpochBatches, SeededSamples, build_datasets, build_transforms, eval_dataset
from fat.distributed import Placement, wait_for_primary_exit
from fat.io import atomic_path, write_json_atomic, write_text_atomic
from fat.preflight import is_fat
from fat.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT, LOG, PROGRESS, Status

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import config_diff
from .curves import Curves

__all__ = ['Trainer', 'MAX_SKIPPED_IN_A_ROW', 'PROGRESS_S']

_logger = logging.getLogger(__name__)

# where the run is now (`fat sweep status` reads it: progress, ETA, stalls) is rewritten at most every PROGRESS_S
PROGRESS_S = 1.0


def _ignore_stop_signals(_worker_id: int):
    # loader workers leave SIGTERM/SIGUSR2/SIGINT to the main process, which checkpoints and then stops them (a
    # terminal's Ctrl-C and slurmstepd signal every process of the group, workers included)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# SIGINT (Ctrl-C) is a stop request like SIGTERM: a checkpoint at the next step, then exit 130; a second one stops
# at once, without the checkpoint
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


# consecutive non-finite losses the fp16 loss scaler may skip before the run counts as diverged (its scale is then
# 2^-MAX_SKIPPED_IN_A_ROW of what it was: no overflow is that large)
MAX_SKIPPED_IN_A_ROW = 50


# torch's optimizers with a fused step: with them the fp16 loss scaler's skip is decided on the device
_FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def loss_scaling(amp: bool, amp_dtype: torch.dtype) -> bool:
    """Whether the run scales its loss (fp16 AMP, CUDA only): it then has a GradScaler, and a fused optimizer."""
    return amp and amp_dtype == torch.float16


class _Diverged(Exception):
    pass


class Trainer:
    """One run: built from a resolved config, resumed from its directory, trained to its result."""

    def __init__(self, cfg: Dict[str, Any], place: Placement):
        self.cfg, self.place, self.device = cfg, place, place.device
        self.out_dir = Path(cfg['output_dir'])
        self.stop_signals: Set[int] = set()  # received since the run started
        self._previous_handlers: Dict[int, Any] = {}
        if cfg['threads']:
            torch.set_num_threads(cfg['threads'])
        if cfg['deterministic']:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True  # as the official code
        self._seed(cfg['seed'])  # the same initial model on every rank

        train, val, info = build_datasets(cfg)
        self.num_classes = info['num_classes']
        self.in_chans = cfg['in_chans'] or info['channels']
        train_tf, eval_tf = build_transforms(cfg, self.in_chans, info['channels'])
        self.train_set = SeededSamples(train, train_tf, cfg['seed'])
        val_set = eval_dataset(val, eval_tf)
        # persistent workers: started once, not per epoch and per evaluation (twice with EMA) while the GPU waits
        workers = cfg['workers']
        val_workers = 0 if isinstance(val_set, TensorDataset) else workers
        self.val_loader = DataLoader(
            Subset(val_set, range(place.rank, len(val_set), place.world_size)), batch_size=cfg['batch_size'],
            num_workers=val_workers, persistent_workers=val_workers > 0, pin_memory=self.device.type == 'cuda',
            worker_init_fn=_ignore_stop_signals)
        self.sampler = DistributedSampler(
            self.train_set, num_replicas=place.world_size, rank=place.rank, shuffle=True, seed=cfg['seed'])
        self.batches = EpochBatches(self.sampler, cfg['batch_size'])
        self.steps_per_epoch = self.batches.steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(self.train_set)} training images make no full batch of {cfg['batch_size']} per process")
        self.train_loader = DataLoader(
            self.train_set, batch_sampler=self.batches, num_workers=workers, persistent_workers=workers > 0,
            pin_memory=self.device.type == 'cuda', worker_init_fn=_ignore_stop_signals,
            # its own generator: creating the loader must not draw from the global RNG the model uses
            generator=torch.Generator().manual_seed(cfg['seed']))

        model_args = dict(cfg['model_args'])
        if cfg['drop_path'] is not None:
            model_args['drop_path_rate'] = cfg['drop_path']
        fasa = dict(fasa=cfg['fasa']) if is_fat(cfg['model']) else {}  # a timm peer trains as a baseline
        model = timm.create_model(
            cfg['model'], num_classes=self.num_classes, in_chans=self.in_chans, **fasa, **model_args)
        self.fasa_variant = getattr(model, 'fasa_variant', None)
        self.params = sum(p.numel() for p in model.parameters())
        model.to(self.device)
        if cfg['channels_last']:
            model.to(memory_format=torch.channels_last)
        if place.world_size > 1 and cfg['sync_bn'] and self.device.type != 'cpu':
            model = convert_sync_batchnorm(model)
        self.model = model
        self.ema = ModelEmaV3(model, decay=cfg['ema_decay'], use_warmup=cfg['ema_warmup']) if cfg['ema'] else None
        self.ddp = model
        if place.world_size > 1:
            with warnings.catch_warnings():  # its replacement cannot yet skip the sync at init either
                warnings.filterwarnings('ignore', message='`broadcast_buffers` is deprecated')
                self.ddp = DistributedDataParallel(
                    model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                    broadcast_buffers=False)  # as the official code
        if cfg['compile']:  # the training step only: evaluation, EMA and checkpoints use the model itself
            from torch._dynamo import list_backends
            if cfg['compile'] not in list_backends(exclude_tags=()):
                raise ValueError(f"compile: unknown torch.compile backend {cfg['compile']!r}; valid: "
                                 f"{', '.join(list_backends())}")
            self.ddp = torch.compile(self.ddp, backend=cfg['compile'])
        self._seed(cfg['seed'] + place.rank)  # from here on, as the official code: each rank its own stream

        self.amp = cfg['amp'] and self.device.type == 'cuda'
        self.amp_dtype = getattr(torch, cfg['amp_dtype'])
        self.scaler = NativeScaler(device=self.device.type) if loss_scaling(self.amp, self.amp_dtype) else None
        self.scaler_skips: List[torch.Tensor] = []  # per step since the last read: whether the scaler skipped it
        # linear lr scaling by the total batch, as the official code
        scale = cfg['batch_size'] * place.world_size / cfg['lr_base_size']
        opt_args = optimizer_kwargs(SimpleNamespace(
            opt=cfg['opt'], lr=cfg['lr'] * scale, weight_decay=cfg['weight_decay'], momentum=cfg['momentum'],
            opt_eps=cfg['opt_eps'], opt_betas=cfg['opt_betas']))
        if self.scaler is not None and get_optimizer_info(cfg['opt']).opt_class in _FUSED_OPTIMIZERS:
            # the fused step takes the loss scaler's found-inf flag on the device and skips there; any other
            # optimizer makes GradScaler read the flag on the host (found_inf.item()) at every step
            opt_args['fused'] = True
        self.optimizer = create_optimizer_v2(model, **opt_args)
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=cfg['epochs'] * self.steps_per_epoch, lr_min=cfg['min_lr'] * scale,
            warmup_lr_init=cfg['warmup_lr'] * scale, warmup_t=int(cfg['warmup_epochs'] * self.steps_per_epoch),
            cycle_limit=1, t_in_epochs=False)

        mixup = cfg['mixup'] > 0 or cfg['cutmix'] > 0 or cfg['cutmix_minmax'] is not None
        self.mixup_fn = Mixup(
            mixup_alpha=cfg['mixup'], cutmix_alpha=cfg['cutmix'], cutmix_minmax=cfg['cutmix_minmax'],
            prob=cfg['mixup_prob'], switch_prob=cfg['mixup_switch_prob'], mode=cfg['mixup_mode'],
            label_smoothing=cfg['smoothing'], num_classes=self.num_classes) if mixup else None
        if mixup:
            self.criterion = SoftTargetCrossEntropy()  # label smoothing is folded into the mixed targets
        elif cfg['smoothing'] > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg['smoothing'])
        else:
            self.criterion = nn.CrossEntropyLoss()

        # progress, restored on resume
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.meters = dict(loss_sum=0., loss_steps=0, seconds=0.)
        self.history: List[Dict[str, Any]] = []
        self.totals = dict(train_seconds=0., train_images=0, eval_seconds=0., eval_images=0, skipped_steps=0,
                           overflow_streak=0)
        self.last_checkpoint_time = time.monotonic()
        self.resumed_from: Optional[Dict[str, int]] = None
        self.curves = Curves(cfg, primary=False, start_step=0)  # writes nothing; run() opens the real ones
        self.last_progress = 0.  # time.monotonic() of the last progress.json
        self.speed: Dict[str, Optional[float]] = dict(step_seconds=None, images_per_s=None, eval_seconds=None)

    def _seed(self, seed: int):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # -- checkpoints ---------------------------------------------------------------------------------------

    def _rank_state(self) -> Dict[str, Any]:
        # what differs between ranks: the random states and, without SyncBatchNorm, the BN running statistics
        state = dict(rng=rng_state(self.device), buffers={k: v.cpu() for k, v in self.model.named_buffers()})
        if self.ema is not None:
            state['ema_buffers'] = {k: v.cpu() for k, v in self.ema.named_buffers()}
        return state

    def state_dict(self) -> Dict[str, Any]:
        if self.place.world_size > 1:
            ranks: List[Any] = [None] * self.place.world_size
            dist.all_gather_object(ranks, self._rank_state())
        else:
            ranks = [self._rank_state()]
        return dict(
            config=self.cfg, epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict() if self.scaler else None,
            ema=self.ema.state_dict() if self.ema else None, ranks=ranks, world_size=self.place.world_size,
            meters=dict(self.meters), history=list(self.history), totals=dict(self.totals))

    def checkpoint(self):
        state = self.state_dict()  # every rank takes part (per-rank states are gathered)
        self.curves.flush()  # the points up to this step are on disk before the checkpoint that resumes after them
        if self.place.primary:
            save_checkpoint(state, self.out_dir)
        self.last_checkpoint_time = time.monotonic()

    def resume(self) -> bool:
        state = load_checkpoint(self.out_dir)
        if state is None:
            return False
        changed = config_diff(state['config'], self.cfg)
        if changed:
            raise ValueError(
                f"{self.out_dir} holds a run with a different config ({', '.join(changed)}); use a new output_dir")
        if state['world_size'] != self.place.world_size:
            # the total batch sets the learning rate and the steps per epoch, which the restored scheduler holds
            raise ValueError(
                f"{self.out_dir} was checkpointed by {state['world_size']} processes and this run has "
                f"{self.place.world_size}: resume it with {state['world_size']} (nodes x tasks per node), or start "
                f"over in a new output_dir")
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.scaler and state.get('scaler') is not None:
            self.scaler.load_state_dict(state['scaler'])
        elif self.scaler:  # written without fp16 AMP (on the CPU, say): the loss scale starts afresh
            _logger.info('the checkpoint holds no loss-scaler state: the fp16 loss scale starts from its default')
        if self.ema:
            self.ema.load_state_dict(state['ema'])
        self.epoch, self.step_in_epoch, self.global_step = state['epoch'], state['step_in_epoch'], state['global_step']
        self.meters, self.history = state['meters'], state['history']
        self.totals.update(state['totals'])
        mine = state['ranks'][self.place.rank]
        set_rng_state(mine['rng'], self.device)
        with torch.no_grad():
            for module, key in ((self.model, 'buffers'), (self.ema, 'ema_buffers')):
                for name, buf in module.named_buffers() if module is not None else ():
                    buf.copy_(mine[key][name])
        self.resumed_from = dict(epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step)
        _logger.info(
            f'resumed from {self.out_dir / LAST_CHECKPOINT}: epoch {self.epoch + 1}, step {self.step_in_epoch}')
        return True

    # -- signals -------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any):
        if signum == signal.SIGINT:
            if signal.SIGINT in self.stop_signals:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now
            if self.place.primary:  # os.write: a print here could re-enter a print the signal interrupted
                os.write(2, b'\ninterrupt: stopping after this step with a checkpoint (Ctrl-C again: stop at once, '
                            b'without it)\n')
        self.stop_signals.add(signum)

    def _stop_votes(self) -> Tuple[float, float]:
        """(stop, requeue) for `_agree`: any stop signal; a SIGUSR2 among them."""
        return float(bool(self.stop_signals)), float(signal.SIGUSR2 in self.stop_signals)

    def install_signal_handlers(self):
        """SIGTERM and SIGUSR2 stop the run at the next step, after a checkpoint (`_stop`). One that the process
        ignores (SIG_IGN) is left ignored."""
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                if signal.getsignal(sig) != signal.SIG_IGN:
                    self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def restore_signal_handlers(self):
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def _stop(self, requeue: bool):
        """After the checkpoint: end this process, at once.

        SIGUSR2 (Slurm's notice of a preemption or of the time limit; it wins over a SIGTERM received with it) goes
        to the handler installed before the run: submitit's requeues the job and exits, and the job resumes from
        the checkpoint. SIGTERM alone (scancel, a node going down) exits with 128 + 15, the handler before not
        consulted: submitit's only logs a SIGTERM and returns, waiting for a SIGUSR2 that a cancelled job never
        gets, so the run would train on. The cell is then FAILED, and the next `fat sweep launch` resubmits it,
        resuming from the checkpoint. Ranks other than 0 leave the requeue to rank 0 (as submitit's handler does) and
        exit only once rank 0 has: see `fat.distributed.wait_for_primary_exit`.
        """
        interrupted = not requeue and self.stop_signals == {signal.SIGINT}
        signum = signal.SIGUSR2 if requeue else signal.SIGINT if interrupted else signal.SIGTERM
        previous = self._previous_handlers.get(signum)
        self.restore_signal_handlers()
        if self.place.world_size > 1:
            dist.barrier()  # rank 0 has written the checkpoint
        _logger.info(f'{signal.Signals(signum).name}: checkpoint written at step {self.global_step}; stopping')
        if interrupted and self.place.primary:
            print(f'interrupted at epoch {self.epoch + 1} step {self.step_in_epoch} (checkpoint written); rerun the '
                  'same command to resume', file=sys.stderr, flush=True)
        if not self.place.primary:
            # leave last: under srun's KillOnBadExit the exit of any rank kills rank 0, mid-requeue
            wait_for_primary_exit(self.place)
        elif requeue and callable(previous):
            previous(signum, None)
        raise SystemExit(128 + signum)

    # -- training ------------------------------------------------------------------------------------------

    def _train_loader(self) -> DataLoader:
        """The training loader, from the current epoch and step on."""
        self.batches.start(self.epoch, self.step_in_epoch)
        return self.train_loader

    def _agree(self, *values: float) -> List[float]:
        """Sum of each value over the ranks: host values (the stop votes of every step), summed on the hosts over the
        gloo control group. Over NCCL they would be copied to the GPU and back, and each copy waits for the
        work queued on it: the host could never queue a step ahead."""
        if self.place.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.place.control_group)
        return t.tolist()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step. Returns this rank's loss still on the device: reading it here would make the host wait
        for the step before it queues the next one; `read_losses` reads a window of steps at once."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.cfg['channels_last']:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mixup_fn is not None:
            x, y = self.mixup_fn(x, y)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            loss = self.criterion(self.ddp(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.cfg['clip_grad']
        if self.scaler is not None:  # non-finite gradients (or loss): the scaler skips the step, lowers its scale
            before = self._loss_scale()
            self.scaler(loss, self.optimizer, clip_grad=clip, clip_mode=self.cfg['clip_mode'],
                        parameters=self.model.parameters())
            self.scaler_skips.append(self._loss_scale() < before)  # on the device: read with the losses
        else:
            loss.backward()
            if clip is not None:
                dispatch_clip_grad(self.model.parameters(), clip, mode=self.cfg['clip_mode'])
            self.optimizer.step()
        self.scheduler.step_update(self.global_step)  # 0-based, as the official code
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        return loss.detach()

    def _loss_scale(self) -> torch.Tensor:
        """The fp16 loss scaler's scale, on the device (no host sync); it drops exactly when a step is skipped."""
        scale = self.scaler._scaler._scale  # None until the first scaled step
        return scale.clone() if scale is not None else torch.tensor(self.scaler._scaler.get_scale(), device=self.device)

    def read_losses(self, losses: List[torch.Tensor]) -> List[float]:
        """The mean over the ranks of each step's loss since the last read (`losses`, emptied), in one host sync and
        one all_reduce; they are accounted in step order, as if each had been read at its own step: averaged for the
        epoch, or, non-finite, handled by `_nonfinite_loss`. Read before every checkpoint, so that no checkpoint
        holds the weights of a run that had already diverged."""
        if not losses:
            return []
        t = torch.stack(losses).double()
        if self.place.world_size > 1:
            dist.all_reduce(t)  # the ranks' scalers agree: they see the same all-reduced gradients
        rows = [t / self.place.world_size]
        if self.scaler_skips:
            rows.append(torch.stack(self.scaler_skips).to(t.device, torch.float64))
        read = torch.stack(rows).tolist()
        values, skipped = read[0], read[1] if len(read) > 1 else [0.] * len(read[0])
        first = self.global_step - len(values)
        losses.clear()
        self.scaler_skips.clear()
        for i, (loss, skip) in enumerate(zip(values, skipped, strict=True)):
            if not math.isfinite(loss):  # a step the loss scaler skipped has no loss to average
                self._nonfinite_loss(loss, first + i)
                continue
            if skip:  # a finite loss whose gradients overflowed: skipped all the same
                self._skipped_step(f'gradients overflowed at step {first + i} (epoch {self.epoch + 1})',
                                   first + i)
            else:
                self.totals['overflow_streak'] = 0
            self.meters['loss_sum'] += loss
            self.meters['loss_steps'] += 1
        return values

    def _nonfinite_loss(self, loss: float, step: int):
        """Without fp16 loss scaling a non-finite loss ends the run (diverged) at its step. With it, as the official
        recipe's apex O1, the scaler skips the step and lowers its scale: training goes on unless it never
        recovers."""
        where = f'at step {step} (epoch {self.epoch + 1})'
        if self.scaler is None:
            self.global_step = step  # the result names the step that diverged, not the read that found it
            raise _Diverged(f'loss is {loss} {where}')
        self._skipped_step(f'loss is {loss} {where}', step)

    def _skipped_step(self, what: str, step: int):
        """A step the fp16 loss scaler skipped (its weights unchanged): counted; more than MAX_SKIPPED_IN_A_ROW in a
        row is divergence, since a run whose gradients always overflow would otherwise end `done` untrained."""
        streak = self.totals['overflow_streak'] = self.totals['overflow_streak'] + 1
        self.totals['skipped_steps'] += 1
        if streak > MAX_SKIPPED_IN_A_ROW:
            self.global_step = step
            raise _Diverged(f'{what}, {streak} steps in a row: the loss scale did not recover')
        if self.place.primary:
            _logger.warning(f'{what}: the loss scaler skips this step')

    def train_epoch(self):
        cfg, start = self.cfg, self.step_in_epoch
        self.ddp.train()
        loader = iter(self._train_loader())
        bar = tqdm(total=self.steps_per_epoch, initial=start, desc=f"epoch {self.epoch + 1}/{cfg['epochs']}",
                   leave=False, dynamic_ncols=True) if self.place.primary and sys.stderr.isatty() else None
        t0, images = time.monotonic(), 0
        pending: List[torch.Tensor] = []  # the losses of the steps since the last read, on the device
        for step in range(start, self.steps_per_epoch):
            # with workers=0 the batch is made here: its per-sample seeding must not touch the training RNG
            rng = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
            x, y = next(loader)
            random.setstate(rng['python'])
            np.random.set_state(rng['numpy'])
            torch.set_rng_state(rng['torch'])
            pending.append(self.train_step(x, y))
            self.step_in_epoch = step + 1
            images += len(x) * self.place.world_size
            lr = self.optimizer.param_groups[0]['lr']
            seconds = time.monotonic() - t0
            self.speed.update(step_seconds=seconds / (step + 1 - start), images_per_s=images / seconds)
            log = (step + 1) % cfg['log_interval'] == 0
            if log:
                loss = self.read_losses(pending)[-1]
                self.curves.scalars(self.global_step, {
                    'train/loss': loss if math.isfinite(loss) else None, 'train/lr': lr,
                    'train/images_per_s': self.speed['images_per_s']})
            self.progress('train')
            if bar is not None:
                if log:
                    bar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.2e}', refresh=False)
                bar.update()
            elif self.place.primary and log:
                _logger.info(
                    f"epoch {self.epoch + 1}/{cfg['epochs']} step {step + 1}/{self.steps_per_epoch} "
                    f"loss {loss:.4f} lr {lr:.3e} {images / (time.monotonic() - t0):.0f} img/s")
            due = (cfg['checkpoint_steps'] and (step + 1) % cfg['checkpoint_steps'] == 0) or (
                cfg['checkpoint_minutes'] and time.monotonic() - self.last_checkpoint_time > 60 * cfg[
                    'checkpoint_minutes'])
            stop, requeue, due = self._agree(*self._stop_votes(), float(bool(due) and self.place.primary))
            if (due or stop) and step + 1 < self.steps_per_epoch:
                self.read_losses(pending)
                self._add_time(t0, images)
                t0, images, start = time.monotonic(), 0, step + 1
                self.checkpoint()
                if stop:
                    if bar is not None:
                        bar.close()
                    self._stop(requeue > 0)
        self.read_losses(pending)
        if bar is not None:
            bar.close()
        self._add_time(t0, images)

    def _add_time(self, t0: float, images: int):
        seconds = time.monotonic() - t0
        self.meters['seconds'] += seconds
        self.totals['train_seconds'] += seconds
        self.totals['train_images'] += images

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        """Top-1 / top-5 (%) and mean cross-entropy over the whole eval set, exact under DDP."""
        if self.place.world_size > 1:
            distribute_bn(model, self.place.world_size, reduce=True)
        model.eval()
        t0 = time.monotonic()
        k = min(5, self.num_classes)
        # correct@1, correct@k, loss sum: summed on the device (in float64, exactly as on the host), read once
        sums, images = torch.zeros(3, dtype=torch.float64, device=self.device), 0
        for batch, (x, y) in enumerate(self.val_loader):
            self.progress('eval', eval_batch=batch, eval_batches=len(self.val_loader))
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.cfg['channels_last']:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = model(x)
            correct = out.topk(k, dim=1).indices.eq(y[:, None])
            sums += torch.stack([correct[:, 0].sum().double(), correct.any(dim=1).sum().double(),
                                 F.cross_entropy(out.float(), y, reduction='sum').double()])
            images += len(y)
        top1, top5, loss, n = self._agree(*sums.tolist(), images)
        seconds = time.monotonic() - t0
        self.totals['eval_seconds'] += seconds
        self.totals['eval_images'] += n
        self.speed['eval_seconds'] = seconds
        return dict(top1=100 * top1 / n, top5=100 * top5 / n, loss=loss / n, images_per_s=n / seconds)

    def end_epoch(self):
        """Evaluate (when due), log, checkpoint (and the best model)."""
        cfg = self.cfg
        record = dict(
            epoch=self.epoch + 1, step=self.global_step, lr=self.optimizer.param_groups[0]['lr'],
            train_loss=self.meters['loss_sum'] / max(1, self.meters['loss_steps']),
            train_images_per_s=self.steps_per_epoch * cfg['batch_size'] * self.place.world_size / max(
                1e-9, self.meters['seconds']),
            train_seconds=self.meters['seconds'])
        if (self.epoch + 1) % cfg['eval_every'] == 0 or self.epoch + 1 == cfg['epochs']:
            metrics = self.evaluate(self.model)
            record.update(val_top1=metrics['top1'], val_top5=metrics['top5'], val_loss=metrics['loss'],
                          eval_images_per_s=metrics['images_per_s'])
            if self.ema is not None:
                ema = self.evaluate(self.ema.module)
                record.update(ema_top1=ema['top1'], ema_top5=ema['top5'])
            best = max((r['val_top1'] for r in self.history if 'val_top1' in r), default=-1.)
            if metrics['top1'] > best and self.place.primary:
                with atomic_path(self.out_dir / BEST_CHECKPOINT, durable=True) as tmp:
                    torch.save(dict(model=self.model.state_dict(), epoch=self.epoch + 1, top1=metrics['top1'],
                                    top5=metrics['top5'], config=cfg), tmp)
        self.history.append(record)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.meters = dict(loss_sum=0., loss_steps=0, seconds=0.)
        self.curves.scalars(record['step'], {
            'epoch/train_loss': record['train_loss'], 'epoch/train_images_per_s': record['train_images_per_s'],
            'val/top1': record.get('val_top1'), 'val/top5': record.get('val_top5'), 'val/loss': record.get('val_loss'),
            'val/images_per_s': record.get('eval_images_per_s'), 'ema/top1': record.get('ema_top1'),
            'ema/top5': record.get('ema_top5')})
        self.checkpoint()
        if self.place.primary:
            write_text_atomic(self.out_dir / LOG, ''.join(json.dumps(r) + '\n' for r in self.history))
            self.progress('train', force=True)
            val = f" val top-1 {record['val_top1']:.2f} top-5 {record['val_top5']:.2f}" if 'val_top1' in record else ''
            _logger.info(
                f"epoch {record['epoch']}/{cfg['epochs']} train loss {record['train_loss']:.4f}{val} "
                f"lr {record['lr']:.3e} {record['train_images_per_s']:.0f} img/s ({record['train_seconds']:.1f} s)")

    def ranks_agree(self) -> bool:
        """Whether every rank ends with the same weights and buffers (a float64 checksum of each)."""
        sums = [t.double().sum().item() for t in self.model.state_dict().values() if t.is_floating_point()]
        mine = torch.tensor(sums, dtype=torch.float64, device=self.device)
        gathered = [torch.empty_like(mine) for _ in range(self.place.world_size)]
        dist.all_gather(gathered, mine)
        return all(torch.equal(g, mine) for g in gathered)

    def progress(self, phase: str, force: bool = False, **extra: Any):
        """Rewrite progress.json (rank 0, at most every PROGRESS_S): where the run is, how fast it goes, its last
        top-1. `fat sweep status` computes ETAs from it and calls a run whose file stops changing STALLED."""
        now = time.monotonic()
        if not self.place.primary or (not force and now - self.last_progress < PROGRESS_S):
            return
        self.last_progress = now
        top1 = next((r['val_top1'] for r in reversed(self.history) if 'val_top1' in r), None)
        cfg = self.cfg
        write_json_atomic(self.out_dir / PROGRESS, dict(
            time=time.time(), pid=os.getpid(), phase=phase, epoch=self.epoch, epochs=cfg['epochs'],
            step_in_epoch=self.step_in_epoch, steps_per_epoch=self.steps_per_epoch, step=self.global_step,
            steps=cfg['epochs'] * self.steps_per_epoch, eval_every=cfg['eval_every'], val_top1=top1,
            **self.speed, **extra))

    def run(self) -> Dict[str, Any]:
        self.install_signal_handlers()
        self.curves = Curves(self.cfg, self.place.primary, self.global_step)
        self.progress('train', force=True)
        try:
            while self.epoch < self.cfg['epochs']:
                if self.step_in_epoch < self.steps_per_epoch:
                    self.train_epoch()
                self.end_epoch()
                stop, requeue = self._agree(*self._stop_votes())
                if stop and self.epoch < self.cfg['epochs']:  # the last epoch done: finish, writing the result
                    self._stop(requeue > 0)
            if self.place.world_size > 1:
                distribute_bn(self.model, self.place.world_size, reduce=True)
                if not self.ranks_agree():
                    raise RuntimeError('the ranks ended with different weights')
            return self.result(Status.DONE)
        except _Diverged as e:
            return self.result(Status.DIVERGED, error=str(e), diverged_step=self.global_step)
        finally:
            self.restore_signal_handlers()
            self.curves.close()

    def result(self, status: str, **extra: Any) -> Dict[str, Any]:
        evaluated = [r for r in self.history if 'val_top1' in r]
        final = evaluated[-1] if evaluated else {}
        best = max(evaluated, key=lambda r: r['val_top1'], default={})
        totals = self.totals
        result = dict(
            status=status, epochs=len(self.history), steps=self.global_step, model=self.cfg['model'],
            fasa=self.fasa_variant, params=self.params, num_classes=self.num_classes, in_chans=self.in_chans,
            final_top1=final.get('val_top1'), final_top5=final.get('val_top5'),
            best_top1=best.get('val_top1'), best_top5=best.get('val_top5'), best_epoch=best.get('epoch'),
            train_time_s=totals['train_seconds'],
            train_images_per_s=totals['train_images'] / totals['train_seconds'] if totals['train_seconds'] else None,
            eval_images_per_s=totals['eval_images'] / totals['eval_seconds'] if totals['eval_seconds'] else None,
            world_size=self.place.world_size, device=str(self.device), amp=self.amp,
            skipped_steps=totals['skipped_steps'])
        if self.ema is not None:
            result.update(final_ema_top1=final.get('ema_top1'), final_ema_top5=final.get('ema_top5'))
        return dict(result, **extra)
