"""The flow on a Relax module: the steps (:mod:`.steps`: prepare, calibrate, lower, build),
running what was built on the host (:mod:`.runner`) and the ``intq`` pipeline of
``tvm.compile`` (:mod:`.pipeline`, registered when this package is imported)."""

from tvm_intq.compiler import pipeline  # noqa: F401  registers relax.get_pipeline("intq")
