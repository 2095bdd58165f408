# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
# Both create .venv themselves; nothing else has to be installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pair known to install and import together here (see README); override for other machines
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: setup data demo test lint clean speed ladder

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# real data for `fat train` (Fashion-MNIST from Debian's dataset-fashion-mnist, 30 MB); sudo when not root
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	$(SUDO) apt-get install -y -o DPkg::Lock::Timeout=600 dataset-fashion-mnist || { $(SUDO) apt-get update -o DPkg::Lock::Timeout=600 && $(SUDO) apt-get install -y -o DPkg::Lock::Timeout=600 dataset-fashion-mnist; }

# the main job: 4 FASA presets x 5 seeds on the CPU proxy through the sweep launcher (Slurm where it is
# installed, else local processes), then collect and report; results land in results/
DEMO_GRID := ablations/demo.yaml
demo: setup data
	$(BIN)/fat sweep launch $(DEMO_GRID)
	$(BIN)/fat sweep wait $(DEMO_GRID); status=$$?; \
	$(BIN)/fat sweep collect $(DEMO_GRID) && $(BIN)/fat report && exit $$status

# the worked fidelity ladder (docs/sweeps.md, "Fidelity ladders"), end to end on local processes: the first rung,
# two promotions, then every point at the upper rungs (what promotion skipped, measured), collect, report
LADDER_GRID := ablations/ladder.yaml
SWEEP := $(BIN)/fat sweep
ladder: setup data
	$(SWEEP) launch $(LADDER_GRID) --cluster local && $(SWEEP) wait $(LADDER_GRID) --poll 5 && $(SWEEP) collect $(LADDER_GRID)
	$(SWEEP) promote $(LADDER_GRID) --cluster local && $(SWEEP) wait $(LADDER_GRID) --poll 5 && $(SWEEP) collect $(LADDER_GRID)
	$(SWEEP) promote $(LADDER_GRID) --cluster local && $(SWEEP) wait $(LADDER_GRID) --poll 5 && $(SWEEP) collect $(LADDER_GRID)
	$(SWEEP) launch $(LADDER_GRID) --rung mid --cluster local && $(SWEEP) wait $(LADDER_GRID) --poll 5
	$(SWEEP) launch $(LADDER_GRID) --rung full --cluster local && $(SWEEP) wait $(LADDER_GRID) --poll 5
	$(SWEEP) collect $(LADDER_GRID) && $(BIN)/fat report

# the speed comparison of FAT and its peers (ablations/speed.yaml), one profile in one run, then the report
PROFILE ?= cpu
speed: setup
	$(BIN)/fat speed ablations/speed.yaml --profile $(PROFILE)
	$(BIN)/fat report

test: setup data
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
