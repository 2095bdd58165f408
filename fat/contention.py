"""Whether a timed round got the machine it waited for: contention is detected and re-timed, never averaged in.

A figure measured while other work held the cores can be several times too low, and averaging rounds does not
reveal it (every round is low). So every timed round records what it actually got:

* ``cpu_share``: CPU time of the timing thread (`time.thread_time`) over the wall time of the round. On a CPU the
  timing thread does the work (torch's intra-op work runs on it and on its OpenMP team), so a share below
  `CPU_SHARE_MIN` means the scheduler gave its core to other work for more than a tenth of the round.
* ``calibration``: a fixed kernel (float32 matmuls of 256x256, about 10-20 ms on one core) timed just before and just
  after the round, as a ratio to the run's reference: the median of every calibration so far (5 at the start, then
  2 per timed attempt). Not the fastest one, an outlier that sat quiet rounds near the bound; not the start's alone,
  which a slow start inflated so that later slowdowns of 25 % passed. Above `CALIBRATION_MAX` the same work ran
  more than 10 % slower than it usually does here (another process on the core or its SMT sibling, memory
  bandwidth, the clock). The worse of the two (before, after) counts.
* ``load1``: the 1-minute load average at the round's end. Recorded, not judged: it lags by a minute and counts
  this process itself.

On CUDA the timing thread mostly waits for the GPU, so its share is recorded but not judged; the calibration kernel
runs on the GPU (fp16 matmuls, synchronised), and the SM clock is recorded where NVML is readable.

`Monitor.measure` runs a round, judges it, and re-times it up to `retries` times (after a pause that lets a burst
of other work pass) while it stays contended; a round still contended after that is kept with its reasons, and
the figure it belongs to is flagged: reported with the reason, never ranked (`fat.report`).

A slow host (a VM whose neighbours hold the physical cores for minutes) slows a whole run evenly, its calibrations
included, so no check relative to the run sees it. Figures kept in one file across runs (`fat data bench`'s) are
compared across runs by the calibration's absolute time (`calibration_ms`): `slower_host` flags the rows of a run
whose kernel took more than `CALIBRATION_MAX` times the file's fastest run's (8.46 ms against 6.48 ms here, with
every figure of that run 20-25 % low).
"""
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch

__all__ = ['CPU_SHARE_MIN', 'CALIBRATION_MAX', 'SPREAD_MAX', 'Check', 'Monitor', 'SLOW_HOST', 'judge',
           'slower_host', 'summarize_checks']

CPU_SHARE_MIN = 0.90  # a round whose timing thread ran less than this fraction of its wall time is contended
CALIBRATION_MAX = 1.10  # a round whose calibration ran more than this times the run's reference is contended
SPREAD_MAX = 10.0  # % : a figure whose rounds span more than this (max - min, in % of their median) is unsteady

T = TypeVar('T')


@dataclass
class Check:
    """What one timed round got: its timing thread's CPU share, its calibration ratio, the load average, how many
    times it was timed, and why it counts as contended (empty: it does not)."""
    cpu_share: float
    calibration: float
    load1: float
    attempts: int = 1
    clock_mhz: Optional[int] = None
    reasons: List[str] = field(default_factory=list)

    @property
    def contended(self) -> bool:
        return bool(self.reasons)


def judge(cpu_share: float, calibration: float, judge_cpu: bool = True, cpu_share_min: float = CPU_SHARE_MIN,
          calibration_max: float = CALIBRATION_MAX) -> List[str]:
    """Why a round with this CPU share and calibration ratio is contended (empty list: it is not)."""
    reasons = []
    if judge_cpu and cpu_share < cpu_share_min:
        reasons.append(f'CPU share {cpu_share:.2f} < {cpu_share_min:.2f}')
    if calibration > calibration_max:
        reasons.append(f'calibration {calibration:.2f}x > {calibration_max:.2f}x')
    return reasons


def _clock_mhz(device: torch.device) -> Optional[int]:
    """The GPU's current SM clock where NVML answers (torch.cuda.clock_rate needs pynvml), else None."""
    if device.type != 'cuda':
        return None
    try:
        return int(torch.cuda.clock_rate(device))
    except Exception:  # noqa: BLE001 -- pynvml missing or NVML unreadable: the clock is simply not recorded
        return None


class Monitor:
    """Calibrates the machine at start and judges timed rounds against it (see the module docstring).

    Args:
        device: Where the rounds run (the calibration kernel runs there too).
        retries: How many times a contended round is re-timed before it is kept, flagged.
        wait: Seconds to pause before each re-timing (doubled each time), so that a burst of other work passes.
        cpu_share_min, calibration_max: The bounds (`CPU_SHARE_MIN`, `CALIBRATION_MAX`).
    """

    def __init__(self, device: torch.device = torch.device('cpu'), retries: int = 2, wait: float = 1.0,
                 cpu_share_min: float = CPU_SHARE_MIN, calibration_max: float = CALIBRATION_MAX):
        if retries < 0:
            raise ValueError(f'retries must be >= 0, got {retries}')
        self.device, self.retries, self.wait = device, retries, wait
        self.cpu_share_min, self.calibration_max = cpu_share_min, calibration_max
        if device.type == 'cuda':
            a = torch.randn(2048, 2048, device=device, dtype=torch.float16)
            self._kernel, self._repeats = (lambda: a @ a), 20
        else:
            a = torch.randn(256, 256)
            self._kernel, self._repeats = (lambda: a @ a), 40
        self.samples = [self.calibrate() for _ in range(5)]

    @property
    def reference(self) -> float:
        """Seconds the calibration kernel usually takes in this run: the median of its calibrations so far."""
        return statistics.median(self.samples)

    def calibrate(self) -> float:
        """Seconds the calibration kernel takes now."""
        sync = torch.cuda.synchronize if self.device.type == 'cuda' else (lambda: None)
        with torch.inference_mode():
            sync()
            start = time.perf_counter()
            for _ in range(self._repeats):
                self._kernel()
            sync()
            seconds = time.perf_counter() - start
        return seconds

    def measure(self, round_: Callable[[], T], cpu_clock: Callable[[], float] = time.thread_time,
                cpus: int = 1) -> Tuple[T, Check]:
        """Run a timed round, re-timing it while it is contended (at most `retries` more times); its result and
        the check of the attempt kept. `cpu_clock` is the CPU time of what does the round's work (default: the
        timing thread; `fat data bench`: its loader worker processes) and `cpus` how many cores that work should
        hold, so that the share is its CPU time over `cpus` x the wall time."""
        attempt = 0
        while True:
            attempt += 1
            before = self.calibrate()
            cpu, wall = cpu_clock(), time.perf_counter()
            result = round_()
            cpu, wall = cpu_clock() - cpu, time.perf_counter() - wall
            after = self.calibrate()
            share = cpu / (cpus * wall) if wall > 0 else 1.0
            calibration = max(before, after) / self.reference
            self.samples += [before, after]
            reasons = judge(share, calibration, self.device.type != 'cuda', self.cpu_share_min, self.calibration_max)
            if not reasons or attempt > self.retries:
                return result, Check(round(share, 3), round(calibration, 3), round(os.getloadavg()[0], 2), attempt,
                                     _clock_mhz(self.device), reasons)
            time.sleep(self.wait * 2 ** (attempt - 1))


def summarize_checks(checks: Sequence[Check]) -> dict:
    """The per-round records of a figure as result columns (semicolon-separated per round, like
    ``round_samples_per_sec``), how many re-timings it took, and ``contended``: '' or the reasons of each round
    that stayed contended."""
    flagged = [f"round {i + 1}: {', '.join(c.reasons)}" for i, c in enumerate(checks) if c.contended]
    clocks = [c.clock_mhz for c in checks if c.clock_mhz is not None]
    return dict(
        round_cpu_share=';'.join(str(c.cpu_share) for c in checks),
        round_calibration=';'.join(str(c.calibration) for c in checks),
        round_load=';'.join(str(c.load1) for c in checks),
        round_clock_mhz=';'.join(str(c) for c in clocks),
        retimed=sum(c.attempts - 1 for c in checks),
        contended='; '.join(flagged))


SLOW_HOST = 'host slower than'  # the start of `slower_host`'s reason


def slower_host(rows: Sequence[Dict[str, str]]) -> List[Dict[str, str]]:
    """`rows` (a results file's, each with `calibration_ms` and `contended`), those of runs whose calibration took
    more than `CALIBRATION_MAX` times the fastest run's flagged as contended with the ratio; a row's earlier flag of
    this kind is replaced, so the verdict follows the file's fastest run as faster ones come."""
    timed = [float(r['calibration_ms']) for r in rows if r.get('calibration_ms')]
    fastest = min(timed, default=None)
    out = []
    for row in rows:
        reasons = [x for x in (row.get('contended') or '').split('; ') if x and not x.startswith(SLOW_HOST)]
        ms = float(row['calibration_ms']) if row.get('calibration_ms') else None
        if ms is not None and ms > CALIBRATION_MAX * fastest:
            reasons.append(f'{SLOW_HOST} in the fastest run of this file: calibration {ms:g} ms, '
                           f'{ms / fastest:.2f}x its {fastest:g} ms')
        out.append(dict(row, contended='; '.join(reasons)))
    return out
