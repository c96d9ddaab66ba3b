"""Evaluation and prediction: the eval pass, forecasting new inputs, their output files and
pictures."""
