"""Tests that start no process and open no listening socket: the runner run once on one claim,
the rules, parsing, rendering, the CLI in-process."""
