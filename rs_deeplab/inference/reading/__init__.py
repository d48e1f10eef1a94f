"""Reading scenes for inference: a sliding strip of rows decoded once, cut into window batches."""
