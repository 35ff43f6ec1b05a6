"""Where the inputs come from: GPU and model profiles, the HF cache and hub, training config files, the local GPU."""
