# Two commands for a fresh machine:  make demo  (the main job)  ·  make test  (the tests)
# Each creates .venv when it is missing. torch is installed first, pinned to the local CPU build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kith-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

DEMO_DATA  ?= data/demo
DEMO_SLICE ?= ../shared/data/ubuntu-irc/2009-03-03_10.jsonl

# Debian packages for optional media features the tests exercise: the Tesseract OCR engine (text in
# photos), a font to draw test images, espeak-ng to synthesise test speech. Installed when missing and
# when this runs as root with apt-get; otherwise those tests skip and say why.
SYSTEM_PACKAGES := tesseract-ocr tesseract-ocr-rus fonts-dejavu-core espeak-ng postgresql

.PHONY: demo test bench install clean system-deps lint messages image image-test

install: $(STAMP)  # ... and converts the embedding model once for this machine (offline; into the user's cache)
	$(BIN)/python -m providers.openvino_encoder --prepare

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kith demo --data-dir $(DEMO_DATA) $(DEMO_SLICE)

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)  # ruff ([tool.ruff]), mypy ([tool.mypy]) and the import contracts ([tool.importlinter]) of pyproject.toml
	$(BIN)/ruff check actors features transports operations memory providers tiers config i18n benchmarks tests cli.py
	$(BIN)/mypy
	$(BIN)/lint-imports

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "note: Debian packages missing ($$missing); their tests will skip"; fi

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) data/demo

messages: $(STAMP)  # refresh i18n/kith.pot from the source, then every i18n/locales/*.po from it (translate the new entries)
	$(BIN)/pybabel extract -F i18n/babel.cfg -k _ -k N_ -k ngettext:1,2 --no-location --sort-output --no-wrap --omit-header -o i18n/kith.pot actors features transports tiers providers i18n
	for po in i18n/locales/*.po; do $(BIN)/pybabel update --no-fuzzy-matching --ignore-obsolete --no-wrap -i i18n/kith.pot -o $$po -l $$(basename $$po .po); done

# Docker (README: Deploy); not part of `make test`: they need a running Docker engine
image:  # the base image kith-base:bookworm when missing (mmdebstrap, no registry), then Dockerfile -> kith:latest
	deploy/build-image.sh

image-test:  # a smoke test of kith:latest: start, /healthz, import, search, SIGTERM, restart, nothing lost
	deploy/image-test.sh
