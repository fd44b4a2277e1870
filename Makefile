# ztplan: `make demo` sets everything up and plans + applies specs/gateway.yaml on the
# sandbox; `make test` sets everything up and runs the checks and tests. Both need root
# (namespaces, iptables) and nothing else on a fresh Debian: the system packages below
# are installed with apt when missing (python3-venv for .venv, procps for sysctl, git for
# specs read from a commit).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SANDBOX := ztplan-sandbox
SYSTEM_PACKAGES := iptables nftables ipset ndppd iproute2 procps gnupg shellcheck git python3 python3-venv

.PHONY: all system-packages install demo test lint bench sandbox-down clean

all: test

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: system-packages $(BIN)/.installed

demo: install
	$(BIN)/ztplan sandbox up
	@eval "$$($(BIN)/ztplan sandbox env)" && set -x && \
	$(BIN)/ztplan plan specs/gateway.yaml --netns $(SANDBOX) && \
	$(BIN)/ztplan apply specs/gateway.yaml --netns $(SANDBOX) --auto-approve && \
	$(BIN)/ztplan plan specs/gateway.yaml --netns $(SANDBOX) --detailed-exitcode && \
	$(BIN)/ztplan apply specs/member.yaml --netns $(SANDBOX)-peer --auto-approve && \
	$(BIN)/ztplan plan specs/member.yaml --netns $(SANDBOX)-peer --detailed-exitcode
	@echo
	@echo "Converged: a second plan of each spec is empty. Look around:"
	@echo "  ip netns exec $(SANDBOX) iptables-save; ip netns exec $(SANDBOX) ip6tables-save"
	@echo "  ip netns exec $(SANDBOX) sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding"
	@echo "  cat /etc/ztplan/netns/$(SANDBOX)/ndppd.conf; pgrep -a ndppd"
	@echo '  eval "$$($(BIN)/ztplan sandbox env)"; curl -s -H "Authorization: token $$ZEROTIER_CENTRAL_TOKEN" $$ZTPLAN_CONTROLLER_URL/network/8056c2e21c000001'
	@echo "  cat state/gw1.json state/laptop.json"
	@echo "  $(BIN)/ztplan sandbox down    # when done"

lint: $(BIN)/.installed
	$(BIN)/ruff check ztplan tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install lint
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python tests/bench/bench_firewall.py

sandbox-down: $(BIN)/.installed
	$(BIN)/ztplan sandbox down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
