"""`da2 plan`: what each method's search and final training will cost before anything runs.

`work` counts each method's trials, steps and evaluations from its config section; `sources` finds the unit
costs (the experiment's ledger, the cache, or `measure`); `bill` prices the work; `projection` prices a named
COCO config from a small config's measured FLOP rate; `planner.make_plan` puts them together. A plan runs no
search and writes only its cache under `<workdir>/plan/`.
"""
