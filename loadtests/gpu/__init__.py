"""The one-shot GPU check (issue 11): CUDA against CPU, maskserve end to end against the graphs'
floor and PyTorch eager, and training speed, written to RESULTS_DIR/gpu.json and gpu.md.
`loadtests/gpu/run.sh [--smoke] RESULTS_DIR` runs it; README.md beside this file says how."""
