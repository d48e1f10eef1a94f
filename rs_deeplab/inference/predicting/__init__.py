"""Predicting and blending: the model over window batches, blended into rows, for one scene or many as one job."""
