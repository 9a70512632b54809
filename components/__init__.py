"""The pipeline's components: one module each for those that carry project logic."""
