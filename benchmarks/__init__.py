"""Speed and fidelity measurements, run as modules: `python -m benchmarks.bench`,
`python -m benchmarks.official_step`."""
