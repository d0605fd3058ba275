# make run   : set up (once) and serve on https://localhost:8443 with the embedded Triton
# make test  : set up (once) and run the whole test suite
VENV  ?= .venv
STAMP := $(VENV)/.bootstrapped

.PHONY: run test bench lint setup
setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-models.txt scripts/bootstrap ledger/anchor/js/package-lock.json tests/idp/package-lock.json
	scripts/bootstrap
	@touch $@

run: $(STAMP)
	$(VENV)/bin/gateway serve $(if $(CONFIG),--config $(CONFIG))

test: $(STAMP)
	$(VENV)/bin/gateway policy check
	$(VENV)/bin/gateway policy test
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python -m benches.bench_overhead

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway backends ledger tests benches
	$(VENV)/bin/ruff format --check gateway backends ledger tests benches
	$(VENV)/bin/mypy
