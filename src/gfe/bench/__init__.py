"""Benchmarks that write JSON: `gfe bench NAME ...`. Each compares methods in the
same run on the same machine, since shared machines are too noisy for absolute
numbers across runs."""
