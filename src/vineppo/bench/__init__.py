"""Benchmarks that ship with the package (`vineppo bench ...`); the scripts in benchmarks/ call them."""
