"""The integer operators the folding emits (:mod:`.integer_kernels`)."""
