"""Training: TrainState, jitted steps, fit with Keras-style callbacks, orbax checkpoints."""
