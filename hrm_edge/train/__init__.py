"""Training on a CPU (the HRM/TRM recipes), training data samplers, and accuracy evaluation."""
