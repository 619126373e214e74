# The two commands of README.md. Each creates and fills .venv when it is missing.
# TORCH picks the torch requirement: the CPU build by default; on a CUDA machine e.g.
#   make quick TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.accelbench-installed

.PHONY: quick test browser postgres

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[postgres,test]'
	@touch $(STAMP)

quick: $(STAMP)
	$(BIN)/accelbench run --quick

# The HTML report test drives a real headless Chromium; install Debian's when we can.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the HTML browser test will be skipped"; }

# The history tests run against a throw-away PostgreSQL server too when its binaries are here.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "postgresql not installed: the history tests against PostgreSQL will be skipped"; }

test: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q
