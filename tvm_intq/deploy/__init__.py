"""Compiled libraries and their measurement: the library and its sidecar on disk
(:mod:`.library`), benches on boards over RPC (:mod:`.board_bench`), deterministic figures on
emulated boards (:mod:`.emulated_figures`)."""
