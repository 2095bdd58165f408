"""Who can write a grid's folders.

Anyone who can write a grid's folders can run code as its owner: Slurm runs the pickled job payloads under
`<workdir>/<grid>/.submitit`, and a `--snapshot` launch's jobs import the code under `.snapshots/`; they can also
change what `fat sweep collect` and `fat report` read. So `fat sweep launch` writes everything (folders, payloads,
and, through the umask its jobs inherit, what they write) without group or world write, and refuses a work
directory whose existing folders others can write (`collect` writes its files there the same way). A team that
shares a work directory says so in the grid (`shared_workdir: true`): the check is skipped and the user's own umask
applies (docs/sweeps.md states the risk). Checkpoints are safe to read either way (fat.train.checkpoint reads them
without running code).
"""
import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

__all__ = ['writable_by_others', 'refusal', 'private_files', 'grid_files', 'OTHERS_WRITE']

OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _why(path: Path, uid: int, sticky_ok: bool) -> Optional[str]:
    """Why users other than `uid` (and root) can write the folder `path`, or None."""
    st = path.stat()
    if st.st_uid not in (uid, 0):
        return f'owned by uid {st.st_uid}'
    if st.st_mode & OTHERS_WRITE and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return f"mode {stat.filemode(st.st_mode)}: {'world' if st.st_mode & stat.S_IWOTH else 'group'}-writable"
    return None


def writable_by_others(workdir: Path, root: Path) -> List[Tuple[Path, str]]:
    """(folder, why) for each existing folder that users other than this one (and root) can write: the work
    directory, the folders above it (a sticky one, like /tmp, lets nobody move what is ours: it passes), and every
    folder of the grid's own (`root`, its cells, `.submitit`, `.snapshots`)."""
    uid, found = os.geteuid(), []
    workdir, root = workdir.absolute(), root.absolute()
    for parent in reversed([p for p in workdir.parents if p.is_dir()]):
        why = _why(parent, uid, sticky_ok=True)
        if why:
            found.append((parent, why))
    mine = [workdir] if workdir.is_dir() else []
    if root.is_dir():
        mine += [Path(top) / d for top, dirs, _ in os.walk(root) for d in [''] + dirs]
    for folder in mine:
        why = _why(folder, uid, sticky_ok=False)
        if why:
            found.append((folder, why))
    return found


def refusal(source: str, workdir: Path, root: Path) -> Optional[str]:
    """The one line that refuses a launch into `workdir` when others can write its folders, or None."""
    found = writable_by_others(workdir, root)
    if not found:
        return None
    (path, why), more = found[0], f' and {len(found) - 1} more folder(s)' if len(found) > 1 else ''
    return (f'{source}: work directory {workdir}: others can write {path} ({why}){more}, and through it run code as '
            f'you: make it writable by you alone (chmod go-w), choose another --workdir, or set `shared_workdir: '
            f'true` in the grid for a team\'s shared work directory (docs/sweeps.md)')


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """The process umask without group and world write, for what is created meanwhile (and what the jobs submitted
    meanwhile create: local jobs inherit the umask, sbatch passes it to the job as SLURM_UMASK)."""
    old = os.umask(0o077)
    os.umask(old | OTHERS_WRITE)
    try:
        yield
    finally:
        os.umask(old)


def grid_files(shared_workdir: bool) -> contextlib.AbstractContextManager:
    """How a verb writes into a grid's work directory: `private_files`, or, for a shared one, the user's umask."""
    return contextlib.nullcontext() if shared_workdir else private_files()
