# StyleGAN-NADA replication: every target builds what it needs. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LEGACY_VENV := .venv-legacy
# A Python 3.7 for the legacy TF 1.15 environment: pyenv's if present, else whatever python3.7 is on PATH.
PYTHON37 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.7*/bin/python3.7) $(shell command -v python3.7 2>/dev/null))

WORLD ?= mini
SHIFTS ?=
METHODS ?=
SEEDS ?=

.PHONY: env env-legacy test convert crosscheck replicate ablate verify reference metrics bench-scoring figures collect bench bench-recipes mini-world mini-world-clip-a \
	mini-world-clip-b mini-world-evaluator mini-world-generator mini-measure clean-env help

help:
	@echo "make replicate   train, score and draw every shift of WORLD (mini by default; WORLD=paper needs make convert)"
	@echo "                 (one run: python -m replication.pipeline.train --shift mini--sketch --seed 0)"
	@echo "                 narrow it with SHIFTS=\"mini--sketch\" METHODS=\"nada source\" SEEDS=\"0\""
	@echo "                 RERUN_STALE=1 re-runs finished mini runs trained or scored with other weights"
	@echo "                 RESCORE=1 scores finished mini runs again from their saved final generator (new metrics)"
	@echo "make ablate      the paper's ablations on the mini world (loss, freezing, mapper, CLIPs) -> runs/ablations/"
	@echo "make verify      fresh scores (runs/scores.csv) against results/reference/ and published numbers"
	@echo "make reference   copy finished runs into the shipped reference results/reference/ (the only writer)"
	@echo "make -j2 mini-world  retrain the four shipped mini-world models (resumable; one thread per model)"
	@echo "make mini-measure  re-measure the shipped mini-world models -> results/mini_world/"
	@echo "make metrics RUN=<run folder> [FID_REFERENCE=<folder>]  score finished runs again (FID/KID, LPIPS, CLIP, truth)"
	@echo "make figures     redraw paper_figures/out/ from results/ only"
	@echo "make test        build the trainer environment (.venv) if needed and run the CPU test suite"
	@echo "make convert     convert every official generator found in the weight cache into our checkpoint format"
	@echo "                 NVIDIA_TF_REPO=<clone of NVlabs/stylegan2> (with make env-legacy): cross-check each TF pickle"
	@echo "                 against NVIDIA's graph; CONVERTER=tf: NVIDIA's unpickler exports the arrays instead"
	@echo "make bench       seconds per training step and peak memory -> results/bench/"
	@echo "make bench-recipes  each mini-world recipe's time on two threads, stage by stage -> results/bench/"
	@echo "make bench-scoring  seconds to score one mini run with every metric -> results/bench/mini-scoring-cpu.json"
	@echo "make env         build only the trainer environment"
	@echo "make crosscheck NVIDIA_TF_REPO=...  build a tiny official TF StyleGAN2 with NVIDIA's code, convert it, compare renders"
	@echo "make env-legacy  build the legacy TensorFlow 1.15 converter environment (Python 3.7) in .venv-legacy"

env: $(VENV)/.stamp

$(VENV)/.stamp: env/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -r env/requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

env-legacy: $(LEGACY_VENV)/.stamp

$(LEGACY_VENV)/.stamp: env/legacy-requirements.txt
	@if [ -z "$(PYTHON37)" ]; then \
	  echo "error: no Python 3.7 found for the legacy TF 1.15 environment; install one (e.g. pyenv install 3.7.16) or pass PYTHON37=/path/to/python3.7" >&2; exit 2; fi
	@$(PYTHON37) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 7))' >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON37) is not a working Python 3.7 (TensorFlow 1.15 needs 3.7); pass PYTHON37=/path/to/python3.7" >&2; exit 2; }
	@$(PYTHON37) -m venv $(LEGACY_VENV) || { echo "error: $(PYTHON37) -m venv $(LEGACY_VENV) failed (is the venv module installed?)" >&2; exit 2; }
	@echo "installing env/legacy-requirements.txt into $(LEGACY_VENV) (log: $(LEGACY_VENV)/install.log)"
	@{ $(LEGACY_VENV)/bin/python -m pip install --upgrade "pip<24" && \
	  $(LEGACY_VENV)/bin/python -m pip install -r env/legacy-requirements.txt; } >$(LEGACY_VENV)/install.log 2>&1 || { \
	  echo "error: pip could not install env/legacy-requirements.txt (tensorflow-cpu 1.15 for Python 3.7, from PyPI) into $(LEGACY_VENV); see $(LEGACY_VENV)/install.log" >&2; exit 2; }
	touch $@

test: env
	$(PY) -m pytest tests

# CONVERTER=tf-free (default): our restricted reader. CONVERTER=tf: NVIDIA's unpickler in the legacy env exports plain
# arrays that the trainer env turns into the checkpoint. NVIDIA_TF_REPO + .venv-legacy: cross-check every TF pickle.
CONVERTER ?= tf-free
convert: env
	$(PY) -m replication.convert --all --converter $(CONVERTER) \
		$(if $(NVIDIA_TF_REPO),--nvidia-tf-repo $(abspath $(NVIDIA_TF_REPO))) \
		$(if $(CONVERT_OUT),--out-dir $(CONVERT_OUT)) $(if $(CROSSCHECK_TOL),--tolerance $(CROSSCHECK_TOL))

crosscheck: env env-legacy
	@if [ -z "$(NVIDIA_TF_REPO)" ]; then echo "error: pass NVIDIA_TF_REPO=/path/to/a/clone/of/NVlabs/stylegan2" >&2; exit 2; fi
	NADA_NVIDIA_TF_REPO=$(abspath $(NVIDIA_TF_REPO)) NADA_CROSSCHECK_OUT=results/convert OMP_NUM_THREADS=1 \
		$(PY) -m pytest tests/test_legacy_crosscheck.py tests/test_convert_pipeline.py -rs -m legacy

# How runs are launched (replicate, ablate): LAUNCHER=local (a process pool; WORKERS x THREADS, 0 = fit the machine)
# or LAUNCHER=slurm (one submitit array job; SLURM_PARTITION, SLURM_TIME minutes, SLURM_GPUS, SLURM_CPUS).
LAUNCHER ?= local
LAUNCH = --launcher $(LAUNCHER) $(if $(WORKERS),--workers $(WORKERS)) $(if $(THREADS),--threads $(THREADS)) \
	$(if $(SLURM_PARTITION),--slurm-partition $(SLURM_PARTITION)) $(if $(SLURM_TIME),--slurm-time $(SLURM_TIME)) \
	$(if $(SLURM_GPUS),--slurm-gpus $(SLURM_GPUS)) $(if $(SLURM_CPUS),--slurm-cpus $(SLURM_CPUS)) $(if $(DEVICE),--device $(DEVICE))

replicate: env
	$(PY) -m replication.pipeline.replicate --world $(WORLD) $(if $(SHIFTS),--shifts $(SHIFTS)) \
		$(if $(METHODS),--methods $(METHODS)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(RERUN_STALE),--rerun-stale) \
		$(if $(RESCORE),--rescore) $(LAUNCH)

# The paper's ablations on the mini world (replication/ablations/mini.toml): loss, layer freezing, mapper, one vs two
# CLIPs, seeds 0-2 -> runs/ablations/ (table and figure). ONLY="loss mapper" narrows it.
ablate: env
	$(PY) -m replication.pipeline.ablate $(if $(ONLY),--only $(ONLY)) $(if $(SEEDS),--seeds $(SEEDS)) $(LAUNCH)

# Fresh scores (runs/scores.csv) against the shipped reference and the published numbers; exit 1 on a failure.
verify: env
	$(PY) -m replication.pipeline.verify --out runs/verify.md

# The only writer of results/reference/: copies finished runs' small files from runs/, then redraws what reads them.
reference: env
	$(PY) -m results.publish
	$(PY) -m paper_figures.ablations

# Each CLIP trains in resumable stages (SHIPPED_STAGES in replication/miniworld/clip_recipe.py): stage k writes
# artifacts/mini_clip/<family>_stage<k>.pt (git-ignored), the next stage starts from it, and the last writes the shipped
# file. The four models are independent one-thread jobs: `make -j2 mini-world` trains two at a time on a 2-core
# machine; MINI_THREADS=2 gives one model both cores. `make bench-recipes` estimates each recipe's time
# (results/bench/mini-recipes-2t.json); docs/mini_world.md says what each stage adds.
MINI_THREADS ?= 1
CLIP_TRAIN = $(PY) -m replication.miniworld.train_clip --threads $(MINI_THREADS)
CLIP_A_STAGES := clip_a clip_a_anchored clip_a_joined clip_a_smiling clip_a_directed
CLIP_B_STAGES := clip_b clip_b_anchored clip_b_smiling
mini-world: mini-world-clip-a mini-world-clip-b mini-world-evaluator mini-world-generator
	@echo "new weights: update their sha256 in env/weights.toml (python -m replication.weights verify NAME prints it)"

mini-world-clip-a: env
	set -e; for stage in $(CLIP_A_STAGES); do $(CLIP_TRAIN) --name $$stage; done

mini-world-clip-b: env
	set -e; for stage in $(CLIP_B_STAGES); do $(CLIP_TRAIN) --name $$stage; done

mini-world-evaluator: env
	$(PY) -m replication.miniworld.evaluator train --threads $(MINI_THREADS) \
		--out replication/miniworld/weights/evaluator.pt

# The generator is four resumable stages (artifacts/ between them): 2,400 steps from scratch; 16,000 more distillation
# steps; 2,000 with the smile's mapping input reseeded and the mouth term; 3,000 with a stronger mouth term.
# Each stage records the sha256 of the one it starts from.
GEN_STAGE1 := artifacts/mini_world/generator_stage1.pt
GEN_STAGE2 := artifacts/mini_world/generator_stage2.pt
GEN_STAGE3 := artifacts/mini_world/generator_stage3.pt
GEN_TRAIN = $(PY) -m replication.miniworld.train_generator train --threads $(MINI_THREADS)
mini-world-generator: env
	$(GEN_TRAIN) --out $(GEN_STAGE1)
	$(GEN_TRAIN) --init $(GEN_STAGE1) --steps 16000 --lr 5e-3 \
		--run-dir artifacts/mini_world/generator_stage2 --out $(GEN_STAGE2)
	$(GEN_TRAIN) --init $(GEN_STAGE2) --reseed-inputs smile --steps 2000 \
		--lr 3e-3 --mouth 2.0 --run-dir artifacts/mini_world/generator_stage3 --out $(GEN_STAGE3)
	$(GEN_TRAIN) --init $(GEN_STAGE3) --steps 3000 --lr 3e-3 --mouth 5.0 \
		--run-dir artifacts/mini_world/generator_stage4 --out replication/miniworld/weights/generator.pt

mini-measure: env
	$(PY) -m replication.miniworld.train_clip --measure --name clip_a
	$(PY) -m replication.miniworld.train_clip --measure --name clip_b
	$(PY) -m replication.miniworld.evaluator measure
	$(PY) -m replication.miniworld.train_generator measure

metrics: env
	@if [ -z "$(RUN)" ]; then echo "error: pass RUN=<finished run folder> (several: RUN=\"a b\"); FID_REFERENCE=<folder> for a paper run's FID" >&2; exit 2; fi
	$(PY) -m replication.pipeline.score $(RUN) $(if $(FID_REFERENCE),--fid-reference $(FID_REFERENCE))

# Seconds to score one mini run with every metric (1,000 samples), after training it into artifacts/ (git-ignored).
bench-scoring: env
	$(PY) -m replication.pipeline.train --shift mini--zombie --seed 0 --outdir artifacts/bench-runs --no-progress
	$(PY) -m replication.pipeline.score artifacts/bench-runs/mini/mini--zombie/nada/seed0 --threads 2 --no-progress \
		--bench results/bench/mini-scoring-cpu.json

collect: env
	$(PY) -m results.collect

figures: env
	$(PY) -m paper_figures.make_all
	$(PY) -m paper_figures.ablations

clean-env:
	rm -rf $(VENV) $(LEGACY_VENV)

bench: env
	$(PY) -m replication.pipeline.bench

# About 6 min: times every stage of the four registry recipes from two short runs each (see the module docstring).
bench-recipes: env
	$(PY) -m replication.miniworld.recipe_bench --threads 2
