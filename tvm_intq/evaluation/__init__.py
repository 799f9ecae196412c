"""Judging programs: a numpy interpreter of integer Relax modules (:mod:`.reference`) and the
integer program against float, layer by layer (:mod:`.evaluate`)."""
