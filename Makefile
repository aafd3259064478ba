# airflow-ha: `make lab` deploys the HA cluster into local containers; `make test` runs every test.
# Both set up whatever is missing first (Python env, Docker engine, base image).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PYTHON    ?= python3
BIN       := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
LAB_INVENTORY ?= inventories/lab
SCENARIO  ?=
PYTEST_ARGS ?=

.PHONY: help setup venv docker image lint test unit molecule molecule-failover e2e lab lab-destroy status bench bench-failover chaos clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements-dev.txt pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python scripts/check-collections.py requirements.yml
	@touch $@

venv: $(VENV)/.installed ## Python environment with Ansible, its collections, Molecule and linters

docker: ## Install and start a Docker engine if none answers
	@scripts/ensure-docker.sh

image: docker ## Build the Debian 12 systemd base image if missing or its recipe changed
	@scripts/build-base-image.sh

setup: venv image ## Everything the tests and the lab need

lint: venv ## ansible-lint (production profile), yamllint, ruff, mypy
	ansible-lint --profile production --offline
	yamllint --strict .
	ruff check src tests dags scripts roles collections
	ruff format --check src tests dags scripts roles collections
	mypy

unit: venv ## Fast tests: no containers
	pytest -m "not molecule and not molecule_extra and not e2e and not containers" $(PYTEST_ARGS)

molecule: setup ## Molecule scenarios (all, or SCENARIO=name)
	pytest -m "molecule or molecule_extra" $(if $(SCENARIO),-k "$(SCENARIO)") $(PYTEST_ARGS)

e2e: setup ## The lab cluster end to end (creates and removes its containers)
	pytest -m e2e $(PYTEST_ARGS)

test: setup lint ## Everything: lint, unit and integration tests, Molecule scenarios, end to end
	pytest -m "not molecule_extra" --durations=25 $(PYTEST_ARGS)

molecule-failover: setup ## The two scheduler_failover scenarios (active_standby is also in `make test`)
	pytest -m "molecule or molecule_extra" -k scheduler_failover $(PYTEST_ARGS)

lab: setup ## Deploy the full cluster into local containers and print where to reach it
	airflow-ha-lab up --inventory $(LAB_INVENTORY)

lab-destroy: venv ## Remove the lab's containers and network (nothing else)
	airflow-ha-lab destroy --inventory $(LAB_INVENTORY)

status: venv ## One table of the running lab's health; fails naming each problem and its runbook
	ansible-playbook -i $(LAB_INVENTORY) playbooks/status.yml

bench: setup ## Deploy times, then each tier's failover time in the lab; writes docs/benchmarks.md
	$(BIN)/python -m airflow_ha.bench --inventory $(LAB_INVENTORY) --write docs/benchmarks.md
	$(BIN)/python -m airflow_ha.bench_failover --inventory $(LAB_INVENTORY) --write docs/benchmarks.md

bench-failover: setup ## Only the failover times (needs a running lab: make lab)
	$(BIN)/python -m airflow_ha.bench_failover --inventory $(LAB_INVENTORY) --write docs/benchmarks.md

chaos: setup ## Faults one at a time against the running lab under load; writes docs/benchmarks.md
	$(BIN)/python -m airflow_ha.chaos --inventory $(LAB_INVENTORY) --write docs/benchmarks.md

clean: ## Remove the Python environment and caches (not the base image or the wheelhouse cache)
	rm -rf $(VENV) .pytest_cache .ruff_cache
