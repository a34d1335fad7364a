"""Benchmarks that write JSON: `gfe bench NAME ...`. Each compares methods in the
same run on the same machine, since shared machines are too noisy for absolute
numbers across runs. Each module holds its benchmark's `run` and its command's
parser (`add_parser`); the numbers they measured are in docs/benchmarks.md and
their JSON in bench/results/."""
