"""Results read back from run folders only: collect (results.jsonl and done markers into one frame),
selection (the named model selection methods, train / lodo / oracle, applied to the recorded rows),
tables (the paper's Table 2, the pruning report, plots), by_algorithm (DomainBed's algorithm x domain
table) and compare (paired, seed-matched differences).

Nothing here trains or imports torch. Submodules are imported explicitly
(``from domgen.results.tables import table2``) so that importing one never pulls in scipy or matplotlib
for another.
"""
