# Set-up and everyday commands. `make dev` and `make test` create the virtual environment
# on first use, so a fresh clone needs nothing else.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= run
SERVICES := api worker scheduler

.PHONY: install dev test up down status clean

PLUGIN_DIRS := plugins/email plugins/data plugins/http plugins/otel

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGIN_DIRS))
	@$(PYTHON) -c 'import sys; sys.exit("bananas needs Python 3.10 or newer, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(addprefix -e ,$(PLUGIN_DIRS))
	touch $(STAMP)

install: $(STAMP)  ## create the virtual environment with bananas, its plugins and dev tools

dev: $(STAMP)  ## run API, worker and scheduler in one process (memory:// unless REDIS_URL is set)
	$(BIN)/bananas dev

test: $(STAMP)  ## run the whole test suite (needs Redis at 127.0.0.1:6379)
	$(BIN)/python -m pytest

# A service counts as running unless its process is gone, or is a zombie that its new parent
# has not reaped yet (kill -0 succeeds on a zombie).
ALIVE = alive() { kill -0 "$$1" 2>/dev/null && case "$$(ps -o stat= -p "$$1" 2>/dev/null)" in Z*) return 1;; esac; }

up: $(STAMP)  ## start API, worker and scheduler in the background against REDIS_URL
	@mkdir -p $(RUN_DIR)
	@$(ALIVE); for service in $(SERVICES); do \
		pidfile=$(RUN_DIR)/$$service.pid; \
		if [ -f $$pidfile ] && alive $$(cat $$pidfile); then \
			echo "$$service already running (pid $$(cat $$pidfile))"; continue; \
		fi; \
		nohup $(BIN)/bananas $$service >> $(RUN_DIR)/$$service.log 2>&1 & echo $$! > $$pidfile; \
		echo "started $$service (pid $$(cat $$pidfile), log $(RUN_DIR)/$$service.log)"; \
	done

down:  ## stop the services that `make up` started, letting running jobs finish
	@$(ALIVE); for service in $(SERVICES); do \
		pidfile=$(RUN_DIR)/$$service.pid; \
		[ -f $$pidfile ] || continue; \
		pid=$$(cat $$pidfile); \
		if kill -TERM $$pid 2>/dev/null; then \
			echo "stopping $$service (pid $$pid)"; \
			for _ in $$(seq 1 150); do alive $$pid || break; sleep 0.1; done; \
			if alive $$pid; then echo "$$service still running after 15s; sending SIGKILL"; kill -KILL $$pid; fi; \
		fi; \
		rm -f $$pidfile; \
	done

status:  ## show which background services are running
	@$(ALIVE); for service in $(SERVICES); do \
		pidfile=$(RUN_DIR)/$$service.pid; \
		if [ -f $$pidfile ] && alive $$(cat $$pidfile); then \
			echo "$$service: running (pid $$(cat $$pidfile))"; else echo "$$service: stopped"; fi; \
	done

clean: down  ## remove the virtual environment and service logs
	rm -rf $(VENV) $(RUN_DIR)

.PHONY: bench
bench: $(STAMP)  ## benchmark bananas against arq, SAQ, RQ, Dramatiq, Celery, Huey and taskiq (about 19 min; BENCH_ARGS=--quick for a short run)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
