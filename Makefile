# The two commands of the README: `make run` (the daemon on its embedded default) and `make test`.
# Both install what they need first (apt packages, .venv) and are safe to repeat.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
BACKBONE := models/backbone-whisper-tiny.en
DATA := data/minds14-synth
MODEL := models/default
SEED ?= 0

.PHONY: setup run test model bench clean-model install-service

setup:
	@scripts/setup.sh

# The default 14-intent model: import the Whisper backbone, synthesize speech, fine-tune. Each step is skipped
# when its output exists, so an interrupted build resumes where it stopped.
$(BACKBONE)/config.json: | setup
	$(BIN)/intentd-train import-backbone whisper-tiny.en --out $(BACKBONE) --force

# 250 clips per intent (200 to train): 79.9% on the held-out voices vs 55.7% with synth's default 50, in 11-14 min
# on 2 CPU cores (bench/README.md, "Default 14-intent model").
$(DATA)/dataset_dict.json: | setup
	$(BIN)/intentd-train synth --intents train/intents/minds14.toml --out $(DATA) --seed $(SEED) --per-intent 250 --force

# The backbone and data are made inside the recipe, not as prerequisites: an existing model is kept even when
# the backbone or data it came from were deleted.
$(MODEL)/model.safetensors:
	$(MAKE) --no-print-directory $(BACKBONE)/config.json $(DATA)/dataset_dict.json
	$(BIN)/intentd-train fit --dataset $(DATA) --base-model $(BACKBONE) --out $(MODEL) --seed $(SEED)

model: setup $(MODEL)/model.safetensors

run: model
	$(BIN)/intentd --config config.toml

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean-model:
	rm -rf $(MODEL) $(DATA) $(BACKBONE)

# Install as a systemd service: code and venv under $(PREFIX), config in /etc/intentd, the model beside the
# code. DESTDIR stages the files elsewhere (for packaging, and for the test of this target).
PREFIX ?= /opt/intentd
DESTDIR ?=
SYSTEMD_DIR ?= /etc/systemd/system
install-service: model
	install -d $(DESTDIR)$(PREFIX) $(DESTDIR)/etc/intentd $(DESTDIR)$(SYSTEMD_DIR)
	python3 -m venv $(DESTDIR)$(PREFIX)/.venv
	$(DESTDIR)$(PREFIX)/.venv/bin/pip install -q "torch==2.9.1" "torchaudio==2.9.*"
	$(DESTDIR)$(PREFIX)/.venv/bin/pip install -q ".[daemon]"
	rm -rf $(DESTDIR)$(PREFIX)/model && cp -r $(MODEL) $(DESTDIR)$(PREFIX)/model
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/README.md
	test -e $(DESTDIR)/etc/intentd/config.toml || \
	  sed 's|^path = "models/default"|path = "$(PREFIX)/model"|' config.toml > $(DESTDIR)/etc/intentd/config.toml
	sed 's|/opt/intentd|$(PREFIX)|g' systemd/intentd.service > $(DESTDIR)$(SYSTEMD_DIR)/intentd.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload && systemctl enable --now intentd && echo "watch it: journalctl -u intentd -f"; \
	else echo "installed under '$(DESTDIR)'; on the host: systemctl daemon-reload && systemctl enable --now intentd"; fi
