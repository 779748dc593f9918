# The two commands of the README: `make run` (the daemon on its embedded default) and `make test`.
# Both install what they need first (apt packages, .venv) and are safe to repeat.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
BACKBONE := models/backbone-whisper-tiny.en
DATA := data/minds14-synth
MODEL := models/default
SEED ?= 0

.PHONY: setup run test model bench clean-model

setup:
	@scripts/setup.sh

# The default 14-intent model: import the Whisper backbone, synthesize speech, fine-tune. Each step is skipped
# when its output exists, so an interrupted build resumes where it stopped.
$(BACKBONE)/config.json: | setup
	$(BIN)/intentd-train import-backbone whisper-tiny.en --out $(BACKBONE) --force

$(DATA)/dataset_dict.json: | setup
	$(BIN)/intentd-train synth --intents train/intents/minds14.toml --out $(DATA) --seed $(SEED)

$(MODEL)/model.safetensors: $(BACKBONE)/config.json $(DATA)/dataset_dict.json
	$(BIN)/intentd-train fit --dataset $(DATA) --base-model $(BACKBONE) --out $(MODEL) --seed $(SEED)

model: setup $(MODEL)/model.safetensors

run: model
	$(BIN)/intentd --config config.toml

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean-model:
	rm -rf $(MODEL) $(DATA) $(BACKBONE)
