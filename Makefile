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

.PHONY: venv test test-all smoke an4 an4-all an4-transformer results clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

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

# All five scorers, one after the other (stages 1-3 run once), then the results table.
# (an4-transformer: the Transformer + CTC experiment of conf/experiment/an4/transformer_ctc.yaml.)
an4-transformer: venv
	recipes/an4/run.sh $(if $(AN4_ROOT),--an4_root "$(AN4_ROOT)") --experiment an4/transformer_ctc --beam_size $(BEAM)

an4-all: venv
	recipes/an4/run.sh $(if $(AN4_ROOT),--an4_root "$(AN4_ROOT)") --stop_stage 3
	for s in $(SCORERS); do recipes/an4/run.sh --stage 4 --experiment an4/$$s --beam_size $(BEAM) || exit 1; done
	$(MAKE) --no-print-directory results

results: venv
	$(BIN)/python scripts/results_table.py recipes/an4/exp

clean:
	rm -rf $(VENV) recipes/an4/data recipes/an4/dump recipes/an4/exp
