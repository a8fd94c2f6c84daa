"""The benchmark behind `scripts/bench`: the same load, direct and through the appliance, alternately.

Pure parts (no processes, tested on their own):
  stats.py     summaries over repetitions, percentiles, ratios
  figures.py   every figure: unit, direction, target
  parse.py     the Kafka performance tools' output
  report.py    the JSON document and the terminal table
  plan.py      ports, paths, cgroups, configuration, policies, names, payloads

Process-running parts:
  environment.py  broker, `appliance serve`, cgroups, enrolment, tear-down
  runner.py       the runs of each figure, both arms alternately
  clients.py      librdkafka load (latency, connect), run inside an arm's cgroup
  cli.py          options, progress, table, JSON file

See docs/performance.md.
"""
