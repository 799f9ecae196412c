"""The searches that build and measure many candidate programs: which layers stay float
(:mod:`.float_layers`, S0's hybrid precision) and which scheme each layer takes
(:mod:`.scheme_choice`, ``--scheme auto``)."""
