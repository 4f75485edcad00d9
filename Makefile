# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
.PHONY: demo test bootstrap bench

demo:
	scripts/demo

test:
	scripts/test

bootstrap:
	scripts/bootstrap
