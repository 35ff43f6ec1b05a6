"""The analytic estimator: pure arithmetic on ModelSpec / TrainSpec / ServeSpec, no torch, no I/O."""
