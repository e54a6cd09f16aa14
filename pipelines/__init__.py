"""ZenML pipelines: the wiring (rain_merge.py), starting a run or a snapshot (run.py) and the commands that
do so (cli.py). Nothing is imported here, so the CLI can add those commands without loading ZenML."""
