#!/usr/bin/env bash
# The packages the lent GPU machine lacks, carried as wheels: it has no network, and its python3 (3.12) already has
# torch, timm and the rest (see docs/distributed.md). Every carried package is pure Python, so wheels built here
# install there.
#   bash benchmarks/gpu_wheels.sh build [DIR]             here: the wheels into DIR (default .gpu-wheels, ignored by
#                                                         git; the device tool's `carry` takes it along)
#   bash benchmarks/gpu_wheels.sh install [DIR] [TARGET]  there: installed offline into TARGET (default /tmp/site);
#                                                         then run with PYTHONPATH=.:TARGET
set -euo pipefail
# fvcore and its dependencies, and submitit's, that the GPU machine's python lacks; at the versions this project's
# venv runs (PYTHON), so that the check runs what the tests ran
PACKAGES=(fvcore iopath yacs termcolor tabulate submitit cloudpickle)
PYTHON=${PYTHON:-.venv/bin/python}
command=${1:-}
dir=${2:-.gpu-wheels}
case "$command" in
build)
    specs=()
    for package in "${PACKAGES[@]}"; do
        specs+=("$package==$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package")")
    done
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$dir.tmp" "${specs[@]}"
    for wheel in "$dir.tmp"/*.whl; do
        case "$wheel" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
        *) echo "gpu_wheels: $(basename "$wheel") is not pure Python: it may not install on the GPU machine" >&2; exit 1 ;;
        esac
    done
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    echo "gpu_wheels: ${#PACKAGES[@]} wheels in $dir: ${specs[*]}"
    ;;
install)
    target=${3:-/tmp/site}
    [ -d "$dir" ] || { echo "gpu_wheels: no $dir here: run 'bash benchmarks/gpu_wheels.sh build' first and carry it" >&2; exit 1; }
    python3 -m pip install --quiet --no-index --no-deps --target "$target" "$dir"/*.whl
    echo "gpu_wheels: installed into $target; run with PYTHONPATH=.:$target"
    ;;
*)
    echo "usage: bash benchmarks/gpu_wheels.sh build [DIR] | install [DIR] [TARGET]" >&2
    exit 2
    ;;
esac
