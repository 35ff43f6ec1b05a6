"""Whether to trust the estimate: the calibration store from `measure --save`, and the published validation set."""
