"""Training, evaluation and restoration on top of the dataset format and model/."""
