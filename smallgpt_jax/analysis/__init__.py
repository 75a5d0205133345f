"""Looking into a model: each token's surprise (scoring), hidden states
layer by layer (representations), pictures (pictures), and its steps
compiled ahead of time for a target machine with XLA's cost estimates
(aot, reading the HLO text with hlo_text and counting it with hlo_cost).
"""
