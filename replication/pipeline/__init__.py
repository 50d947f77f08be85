"""The orchestration floor: CLIs that train, score, sweep, bench and draw; the only code that imports baselines/,
metrics/, results/ and paper_figures/ (the layering contract, tests/test_layers.py)."""
