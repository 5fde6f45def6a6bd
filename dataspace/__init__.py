"""dataspace: a trusted data space for robot training data."""
