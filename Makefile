# Task runner. The two commands a newcomer needs:
#   make up      deploy the default stack (aws-g5), installing whatever is missing
#   make test    run the whole test suite offline, with no cloud account and no Pulumi CLI
STACK ?= aws-g5
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

# Cloud SDKs probe the instance-metadata address when they find no credentials;
# the tests must never touch the network beyond loopback.
TEST_ENV := AWS_EC2_METADATA_DISABLED=true NO_GCE_CHECK=True GCE_METADATA_HOST=127.0.0.1:9 \
	GCE_METADATA_IP=127.0.0.1:9 AWS_DEFAULT_REGION=us-east-1 HF_HUB_OFFLINE=1 PULUMI_SKIP_UPDATE_CHECK=true

.PHONY: help dev test lint up preview destroy wake pulumi clean

help:
	@sed -n 's/^# \{0,1\}//p' Makefile | head -4

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt server/requirements.txt tests/server/js/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	# The JS client web apps use (@huggingface/inference), for tests/server/test_js_client.py.
	npm ci --prefix tests/server/js --no-audit --no-fund --loglevel=error
	touch $@

dev: $(VENV)/.dev-installed

test: dev
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

lint: dev
	$(VENV)/bin/ruff check .

up:
	./scripts/deploy.sh up $(STACK) $(ARGS)

preview:
	./scripts/deploy.sh preview $(STACK) $(ARGS)

destroy:
	./scripts/deploy.sh destroy $(STACK) $(ARGS)

# Start an instance the idle auto-stop powered off, and wait until it answers /ready.
wake:
	./scripts/deploy.sh wake $(STACK) $(ARGS)

# Any pulumi command against the stack's local state, e.g. ARGS="config set gcp:project my-project".
pulumi:
	./scripts/deploy.sh pulumi $(STACK) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
