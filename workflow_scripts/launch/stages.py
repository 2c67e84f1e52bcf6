"""Every stage the launcher can run: its entry function (run in each task) and optional gather step
(run once in the rule's own process with every task's return value)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageEntry:
    run: str  # "module:function" taking a JobContext
    gather: str | None = None  # "module:function" taking (JobSpec, list of task results)
    # "module:function" taking the config and returning how many elements the stage's job array has
    # (each element's JobSpec carries its array_index); None: one job
    array: str | None = None


STAGES: dict[str, StageEntry] = {
    "build_tiny_model": StageEntry("workflow_scripts.models.stage:build_tiny_model"),
    "data_collect": StageEntry("workflow_scripts.data.stage:collect"),
    "data_caption": StageEntry(
        "workflow_scripts.data.stage:caption", gather="workflow_scripts.data.stage:gather_captions"
    ),
    "data_build": StageEntry("workflow_scripts.data.stage:build"),
    "pretrain_encoder": StageEntry("workflow_scripts.pretrain.encoder_sft:run"),
    "pretrain_decoder": StageEntry("workflow_scripts.pretrain.decoder_flow:run"),
    "data_rl_select": StageEntry("workflow_scripts.data.stage:rl_select"),
    "rl_coldstart": StageEntry("workflow_scripts.rl.stage:coldstart"),
    "rl_encoder": StageEntry("workflow_scripts.rl.stage:encoder"),
    "rl_decoder": StageEntry("workflow_scripts.rl.stage:decoder"),
    "rl_variant": StageEntry("workflow_scripts.rl.stage:variant"),
    "select_checkpoint": StageEntry("workflow_scripts.eval.stage:select_checkpoint"),
    "eval_items": StageEntry("workflow_scripts.eval.stage:eval_items"),
    "eval_system": StageEntry("workflow_scripts.eval.stage:eval_system"),
    "eval_generate": StageEntry(
        "workflow_scripts.eval.stage:eval_generate",
        gather="workflow_scripts.eval.stage:gather_generated",
        array="workflow_scripts.eval.stage:generation_shards",
    ),
    "eval_score": StageEntry("workflow_scripts.eval.stage:eval_score"),
    "eval_judge": StageEntry("workflow_scripts.eval.stage:eval_judge"),
    "eval_summary": StageEntry("workflow_scripts.eval.stage:eval_summary"),
    "unitoken_vq": StageEntry("workflow_scripts.unitoken.stage:train_vq"),
    "unitoken_pretokenize": StageEntry(
        "workflow_scripts.unitoken.stage:pretokenize",
        gather="workflow_scripts.unitoken.stage:gather_pretokenized",
        array="workflow_scripts.unitoken.stage:pretokenize_shards",
    ),
    "unitoken_train": StageEntry("workflow_scripts.unitoken.stage:train_stage"),
    "unitoken_system": StageEntry("workflow_scripts.unitoken.stage:unitoken_system"),
}
