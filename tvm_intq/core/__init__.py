"""The quantization core, pure numpy (no TVM): the papers' integer equations
(:mod:`.intmath`), the schemes as policy objects (:mod:`.schemes`) and the error metrics
(:mod:`.metrics`). The compiled programs are tested against it."""
