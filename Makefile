# The two commands a newcomer needs:
#   make demo   set up .venv and run the demo (synth -> train -> infer -> evaluate)
#   make test   set up .venv and run the test suite (this is what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(BIN)/medattn demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/attention_unet.py

clean:
	rm -rf $(VENV) build *.egg-info medattn_demo
