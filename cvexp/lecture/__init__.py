"""The lecture's self-attention worked example: the computation, its figures and its report."""
