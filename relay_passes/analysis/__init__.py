"""What the passes read from a Relax module, kept apart from the rewrites: IR helpers
(:mod:`.ir_utils`, :mod:`.rebuild`), the quantization points (:mod:`.quant_points`), lookup
tables of elementwise regions (:mod:`.lookup_tables`) and accumulator ranges
(:mod:`.accumulators`)."""
