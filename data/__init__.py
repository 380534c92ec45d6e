"""Split lists of LA and ACDC, and the scripts that fetch, prepare and verify the data: `python -m data.<name>`."""
