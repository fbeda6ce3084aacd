# Task runner. Every target sets up the virtual environment first (.venv, editable install), so on a fresh
# machine `make test` and `make an4 AN4_ROOT=/path/to/an4` are the only commands needed.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
AN4_ROOT ?=
EXPERIMENT ?= an4/location_aware_x4_noaug
BEAM ?= 10
SCORERS := location location_aware additive dot general

.PHONY: venv lock test test-all smoke an4 an4-ensemble an4-all an4-transformer an4-robust results clean device-bundle

# Installs the exact versions of requirements.lock (every package, sha256-checked), then the project itself
# without resolving anything again. `make lock` rewrites the lock from pyproject.toml (see README, "Install").
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "import torch, torchaudio; print('torch', torch.__version__, '/ torchaudio', torchaudio.__version__)"
	touch $@

venv: $(VENV)/.installed

# Re-resolve the lock (uv's pip-compatible compiler; one universal lock for Linux/macOS/Windows, Python >= 3.10).
UV_VERSION ?= 0.13.9
lock:
	$(PYTHON) -m pip install -q "uv==$(UV_VERSION)"
	$(PYTHON) -m uv pip compile pyproject.toml --extra test --universal --python-version 3.10 --generate-hashes \
	  --no-header -o requirements.lock

# Non-slow tests; then, when AN4_ROOT points at the corpus, a 1-epoch smoke run of the recipe on it.
test: venv
	$(BIN)/python -m pytest -m "not slow" -q
	@if [ -n "$(AN4_ROOT)" ] && [ -d "$(AN4_ROOT)/etc" ]; then $(MAKE) --no-print-directory smoke; \
	else echo "AN4_ROOT not set: skipping the recipe smoke run"; fi

test-all: venv
	$(BIN)/python -m pytest -q

smoke: venv
	recipes/an4/run.sh --an4_root "$(AN4_ROOT)" --tag _smoke --beam_size 2 \
	  --train_args "trainer.max_epochs=1 trainer.limit_train_batches=3 trainer.limit_val_batches=1 trainer.enable_progress_bar=false" \
	  --decode_args "max_len_ratio=0.5"

# The main job: the AN4 recipe end to end with the default experiment (downloads AN4 if AN4_ROOT is empty).
an4: venv
	recipes/an4/run.sh $(if $(AN4_ROOT),--an4_root "$(AN4_ROOT)") --experiment $(EXPERIMENT) --beam_size $(BEAM)

# The ensemble chosen on dev (recipes/an4/README.md): the default experiment (stages 0-7), two more seeds of it and
# two seeds of an4/location_aware_x4 (x4 + mild SpecAugment + speed perturbation), decoded together (stage 5-7)
# into exp/ensemble_x4noaug3_x4aug2 with length penalty 1.0 (chosen on dev). The five trainings took 269 min of wall time here (one torch thread each,
# two at a time on the 2-core CPU).
X4_RUN = recipes/an4/run.sh --stage 4 --stop_stage 4
an4-ensemble: an4
	$(X4_RUN) --experiment an4/location_aware_x4_noaug --tag _seed2 --train_args seed=2
	$(X4_RUN) --experiment an4/location_aware_x4_noaug --tag _seed3 --train_args seed=3
	$(X4_RUN) --experiment an4/location_aware_x4
	$(X4_RUN) --experiment an4/location_aware_x4 --tag _seed2 --train_args seed=2
	recipes/an4/run.sh --stage 5 --experiment an4/location_aware_x4_noaug --beam_size $(BEAM) --length_penalty 1.0 --ensemble_name x4noaug3_x4aug2 \
	  --ensemble "exp/an4_pblstm_location_aware_x4_noaug_seed2 exp/an4_pblstm_location_aware_x4_noaug_seed3 exp/an4_pblstm_location_aware_x4 exp/an4_pblstm_location_aware_x4_seed2"

# All five scorers, one after the other (stages 1-3 run once), then the results table.
# an4-transformer: the Transformer + CTC configuration that works on the machine it runs on: an4/transformer_ctc_cpu
# (d 192, batches of 8, 150 epochs, bf16 autocast where the CPU has it; ~78 min on a 2-core CPU with 2 threads,
# test WER 10.7 % at the dev-chosen λ 0.6, recipes/an4/RESULTS.md "One long cosine run"), trained with trainer=gpu
# and decoded on cuda when torch sees a GPU. The ESPnet-sized an4/transformer_ctc (GPU batches of 200 s) reached
# only 16.9 % on an H200 (RESULTS.md "GPU"), so it is not what this target runs.
an4-transformer: venv
	@if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  gpu="--train_args trainer=gpu --decode_args device=cuda"; else gpu=""; fi; \
	recipes/an4/run.sh $(if $(AN4_ROOT),--an4_root "$(AN4_ROOT)") --experiment an4/transformer_ctc_cpu --beam_size $(BEAM) --ctc_weight 0.6 $$gpu

# an4-robust: the recipe with the channel/noise-augmented experiment (an4/location_aware_x4_channel: simulated rooms,
# generated noise and a competing talker, band-limiting incl. 8 kHz, gain; 48 epochs) and the robustness sets
# (telephone band, noise at 10 / 0 dB, reverberation, silence, noise only) scored in stage 6; the model shipped as
# models/an4_pblstm_x4_channel (recipes/an4/README.md "Audio unlike AN4").
an4-robust: venv
	recipes/an4/run.sh $(if $(AN4_ROOT),--an4_root "$(AN4_ROOT)") --experiment an4/location_aware_x4_channel --eval_sets true --beam_size $(BEAM)

an4-all: venv
	recipes/an4/run.sh $(if $(AN4_ROOT),--an4_root "$(AN4_ROOT)") --stop_stage 3
	for s in $(SCORERS); do recipes/an4/run.sh --stage 4 --experiment an4/$$s --beam_size $(BEAM) || exit 1; done
	$(MAKE) --no-print-directory results

results: venv
	$(BIN)/python scripts/results_table.py recipes/an4/exp

clean:
	rm -rf $(VENV) recipes/an4/data recipes/an4/dump recipes/an4/exp

# Before a run on an offline GPU machine: ../shared/tools/gpu-bundle plus the wheels of the lhotse data layer, which
# the GPU image lacks (versions as in requirements.lock; all have CPython 3.12 x86-64 wheels).
DEVICE_EXTRA := lhotse==1.33.0 lilcom==1.8.2 cytoolz==1.2.0 toolz==1.2.0 intervaltree==3.2.1 sortedcontainers==2.4.0 \
  audioread==3.1.0 tabulate==0.10.0 urllib3==2.8.0 click==8.5.1
device-bundle:
	../shared/tools/gpu-bundle $(DEVICE_EXTRA)
