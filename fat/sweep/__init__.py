"""Ablation grids on Slurm through submitit: `fat sweep plan | launch | status | collect`.

A grid file (`ablations/*.yaml`, see `fat.sweep.spec`) expands into cells, each one fully resolved config with
a directory named by the hash of that config (`fat.sweep.cells`). `launch` submits the cells that are neither
finished nor queued as job arrays of Checkpointable jobs (`fat.sweep.launch`, `fat.sweep.job`); `status` reads
each cell's state from disk and the scheduler (`fat.sweep.state`); `collect` tables them (`fat.sweep.collect`).
The command (`fat.sweep.cli`) is registered with `fat` through `register()`.
"""
