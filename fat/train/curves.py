"""Training curves for the tools researchers open: TensorBoard event files, and Weights & Biases on request.

`log.jsonl` stays the run's record (the report reads it); these are views of the same run, written by rank 0.
Each point carries the run's global step, so a resumed run must neither repeat nor lose one: every point up to a
step is flushed to disk before the checkpoint of that step is written (`Curves.flush`), and a (re)start first cuts
the event files back to the step it resumes from (`truncate_events`), dropping what a killed process wrote after
its last checkpoint, which the resumed run writes again. The event files then hold each step once, for any reader.
W&B resumes its run by id and ignores steps it already has (docs/watching.md).
"""
import hashlib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from fat.io import atomic_path

__all__ = ['Curves', 'run_suffix', 'truncate_events', 'read_scalars']

EVENTS_GLOB = 'events.out.tfevents.*'


def run_suffix(out_dir: Path) -> str:
    """The end of the names of a run's event files: from its run directory, so that a start cuts back only its own
    run's files, whatever else shares the TensorBoard directory."""
    return '.' + hashlib.sha1(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]


def truncate_events(log_dir: Path, last_step: int, suffix: str = '') -> int:
    """Drop every event after `last_step` from the event files in `log_dir` whose names end with `suffix` (each
    file rewritten atomically, so a kill leaves it cut or whole, and the next start cuts it again); the number of
    events dropped."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for path in sorted(Path(log_dir).glob(EVENTS_GLOB + suffix)):
        records = list(RawEventFileLoader(str(path)).Load())  # a record torn by a kill is left out
        kept = [r for r in records if event_pb2.Event.FromString(r).step <= last_step]
        if len(kept) == len(records) and path.stat().st_size == sum(len(r) + 16 for r in records):
            continue  # nothing to drop, no torn tail (a record is framed by 16 bytes)
        dropped += len(records) - len(kept)
        with atomic_path(path) as tmp:
            with open(tmp, 'wb') as f:
                writer = RecordWriter(f)
                for record in kept:
                    writer.write(record)
    return dropped


def read_scalars(log_dir: Path) -> Dict[str, list]:
    """{tag: [(step, value), ...]} of every scalar in the event files of `log_dir`, in file order (tests, checks)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: Dict[str, list] = {}
    for path in sorted(Path(log_dir).glob(EVENTS_GLOB)):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:  # the loader migrates simple values to tensors
                scalars.setdefault(value.tag, []).append(
                    (event.step, float(tensor_util.make_ndarray(value.tensor).item())))
    return scalars


class Curves:
    """Scalars of one run, by global step, to TensorBoard (`tensorboard`, default on) and W&B (`wandb`)."""

    def __init__(self, cfg: Mapping[str, Any], primary: bool, start_step: int):
        self.tb = self.wandb = None
        if not primary:
            return
        out_dir = Path(cfg['output_dir'])
        log_dir = Path(cfg['tensorboard_dir'] or out_dir)
        if cfg['tensorboard']:
            from torch.utils.tensorboard import SummaryWriter
            log_dir.mkdir(parents=True, exist_ok=True)
            suffix = run_suffix(out_dir)
            truncate_events(log_dir, start_step, suffix)
            self.tb = SummaryWriter(str(log_dir), filename_suffix=suffix)
        if cfg['wandb']:
            try:
                import wandb
            except ImportError:
                raise ValueError("wandb=true needs Weights & Biases: pip install -e '.[wandb]'") from None
            # one W&B run per run directory, resumed under the same id; WANDB_MODE=offline works without network
            run_id = run_suffix(out_dir)[1:]
            self.wandb = wandb.init(project=cfg['wandb_project'], name=log_dir.name, id=run_id, resume='allow',
                                    dir=str(out_dir), config=dict(cfg), reinit='create_new')

    def scalars(self, step: int, values: Mapping[str, Optional[float]]) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        if self.tb is not None:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(dict(values), step=step)

    def flush(self) -> None:
        """Every point so far on disk: called before each checkpoint."""
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tb = self.wandb = None
