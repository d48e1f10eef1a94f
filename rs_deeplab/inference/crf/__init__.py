"""DenseCRF: refinement of probabilities with the image, its worker pool, and the search for its kernels."""
