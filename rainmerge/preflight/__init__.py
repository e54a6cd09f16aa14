"""Pre-flight plan: every check that metadata allows, before a single weight byte is fetched.

`build_plan(cfg)` reads only config.json, the safetensors index and shard headers (local: the first
8 + N bytes of each file; Hub: `HfApi.get_safetensors_metadata`, which reads headers by HTTP range),
file sizes and the commit sha (`HfApi.model_info(files_metadata=True)`), and small files fetched with
`hf_hub_download` (config, tokenizer, generation config, chat template). It returns a `PlanReport`
(pydantic, JSON-serialisable): architecture and the shape of every merged tensor against `ArchSpec`,
embeddings (vocab rows, tied or not), the LRM's think tokens and template pre-fill, calibration rows
against each projected module's input width, resource estimates, lineage, and the problems that would
make a merge fail. `run_plan(cfg)` prints it and returns 0, or 2 when a merge would fail.

The package is the one home of a merge's checks. `checks` holds those the merge start runs again on
the opened models (`rainmerge.preflight.merge_start.preflight`): shard headers, architecture, merged tensors' shapes
and dtypes, the output's disk space, non-finite weights. The plan's own sections: `sources` (reading
one input's metadata), `tokenizer` (think tokens, template), `calibration_rows` (calibration files,
rows vs width), `lineage_check`, `resources` and `evaluation` (estimates); `report` is the PlanReport
and its text, `plan` puts them together.

No zenml / mlflow / kfp imports; never trust_remote_code; nothing is unpickled.
"""

from .plan import build_plan, run_plan
from .plan_report import PlanReport, format_plan

__all__ = ["PlanReport", "build_plan", "format_plan", "run_plan"]
