"""`fat sweep status --watch`: the grid's progress until nothing is queued or running.

On a terminal, one tqdm-style bar per running cell and one for the grid, redrawn in place (the cursor moved back
over the previous block with ANSI escapes, as tqdm's own multi-bar display does); elsewhere (a file, a pipe, CI
logs) a plain timestamped line for each cell whose progress changed and for the grid. The exit status is that of
`fat sweep wait`: 0 when every cell is DONE, 1 otherwise.
"""
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional, TextIO

from tqdm import tqdm

from fat.rundir import ACTIVE, State

from .cells import describe
from .progress import annotate, cell_text, grid_text
from .state import CellState, summary

__all__ = ['watch', 'bars']

_LIVE = (State.RUNNING, State.STALLED)


def _bar(label: str, fraction: float, text: str, width: int) -> str:
    esc = text.replace('{', '{{').replace('}', '}}')
    line = tqdm.format_meter(fraction, 1., 0, prefix=label, bar_format='{desc} {percentage:3.0f}%|{bar:12}| ' + esc)
    return line[:width]  # one screen line each, or the redraw would not land on the block


def bars(states: List[CellState], grid: Dict[str, Any], width: int, height: int) -> List[str]:
    """The block drawn on a terminal: a bar per running (or stalled) cell, then the grid's."""
    live = [st for st in states if st.state in _LIVE]
    room = max(1, height - 3)  # the block, with the "more" and grid lines, fits the screen (no scrolling)
    live_shown = live[:room]
    labels = [describe(st.cell.axes) or st.cell.id for st in live_shown]
    pad = min(max(map(len, labels), default=4), 28)
    lines = []
    for st, label in zip(live_shown, labels, strict=True):
        p = st.progress or {}
        text = f'STALLED {st.detail}' if st.state == State.STALLED else cell_text(p)
        lines.append(_bar(label[:pad].ljust(pad), min(1., p.get('step', 0) / (p.get('steps') or 1)), text, width))
    if len(live) > room:
        lines.append(f'... and {len(live) - room} more running')
    lines.append(_bar('grid'.ljust(pad), float(grid['fraction_done']), grid_text(grid)[len('grid: '):], width))
    return lines


def watch(states_now: Callable[[], List[CellState]], poll: float, stalled_after: float,
          out: Optional[TextIO] = None) -> int:
    """Show progress every `poll` seconds until no cell is queued or running; the exit status of `wait`."""
    out = out or sys.stdout
    tty = out.isatty()
    drawn, shown = 0, {}
    while True:
        states = states_now()
        grid = annotate(states, stalled_after)
        if tty:
            size = shutil.get_terminal_size()
            lines = bars(states, grid, size.columns - 1, size.lines)
            # back to the first line of the previous block, clear to the end of the screen, draw the new one
            out.write((f'\x1b[{drawn}F\x1b[J' if drawn else '') + '\n'.join(lines) + '\n')
            drawn = len(lines)
        else:
            stamp = time.strftime('%H:%M:%S')
            now = {st.cell.id: f'{st.cell.id}  {st.state:<8} {describe(st.cell.axes)}  '
                               + (st.detail if st.state == State.STALLED else cell_text(st.progress or {}))
                   for st in states if st.state in _LIVE}
            now['grid'] = grid_text(grid)
            for key, line in now.items():
                if shown.get(key) != line:
                    out.write(f'[{stamp}] {line}\n')
            shown = now
        out.flush()
        if not any(st.state in ACTIVE for st in states):
            break
        time.sleep(poll)
    out.write(summary(states) + '\n')
    return 0 if all(st.state == State.DONE for st in states) else 1
