# One entry point. `make demo` and `make test` set everything up first (idempotent).
SHELL := /bin/bash
CARGO ?= cargo
export LOGSAD_DATA_DIR ?= $(CURDIR)/.deps
PLUGIN_DIR := $(CURDIR)/target/release
export GST_PLUGIN_PATH := $(PLUGIN_DIR)$(if $(GST_PLUGIN_PATH),:$(GST_PLUGIN_PATH))

.PHONY: all deps build demo test bench bench-gpu clean

all: build

deps:
	./scripts/setup-deps.sh

build: deps
	$(CARGO) build --release --locked

# The main job: enroll 4 textile images, annotate a short video, write JSON lines to out/.
demo: build
	./pipelines/demo.sh

# Every test: unit and integration tests (release: the matching step is slow unoptimised),
# then every script in pipelines/ on short input.
test: build
	$(CARGO) test --release --locked
	./tests/pipelines.sh

bench: build
	$(CARGO) bench --locked --bench throughput
	$(CARGO) bench --locked --bench resample
	# Every preset: frames/s in-process and in a pipeline, time per stage, FLOPs, % of GEMM peak.
	$(CARGO) bench --locked --bench presets
	# Streams through one shared instance, live latency (10 minutes), memory over 4000 frames.
	BENCH_LATENCY_SECONDS=$${BENCH_LATENCY_SECONDS:-600} $(CARGO) bench --locked --bench streams
	# The logsad preset's time per stage on the synthetic logic scenes (last line of the eval).
	./target/release/logsad synth --loco --out out/bench-loco >/dev/null
	./target/release/logsad eval --preset logsad --shots 4 --no-pixel --out out/bench-logsad \
		out/bench-loco | tail -n 1

# The presets bench with ONNX Runtime's CUDA and TensorRT providers (docs/gpu.md); says what is
# missing and exits 0 where there is no GPU. BUNDLE=DIR runs an unpacked scripts/gpu-bundle.sh.
bench-gpu:
	./scripts/bench-gpu.sh

clean:
	$(CARGO) clean
	rm -rf out
