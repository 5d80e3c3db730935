# The two commands of the README's quick start. Each builds .venv on first use.
.PHONY: demo test lint venv
PYTEST_ARGS ?=

venv:
	@bash scripts/bootstrap.sh

demo: venv
	.venv/bin/segflow demo

test: venv
	bash scripts/test.sh $(PYTEST_ARGS)
