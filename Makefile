# The README's two commands. Both run scripts/setup first, which installs
# whatever is missing and is quick when nothing is.
PY := .venv/bin/python

.PHONY: setup run test docs

setup:
	bash scripts/setup

## Start the embedded broker and the appliance on its embedded defaults, enrol a demo workload, show live traffic.
run: setup
	$(PY) -m appliance demo

## Run the whole test suite: pure tests and integration tests on the real kernel, broker and SQLite.
test: setup
	$(PY) -m pytest

## Regenerate docs/cli.md from the commands' --help and the API table in docs/policy.md from the code.
docs: setup
	$(PY) -m appliance.cli.docgen --write
