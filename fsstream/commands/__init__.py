"""The operator commands beside the workers: produce, tail, replay, load definitions, and
the warehouse queries."""
