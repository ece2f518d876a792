"""The blocks' subflow of a very large region: its parameters must fit the Prefect API's limit.

Found by running `dsqnet detect` on a 2 x 1 degree region at 0.5 m (4,350 blocks): the
subflow's parameters, the plan's blocks as lists, came to 664 KB and the API refused the run
(422, "Flow run parameters must be less than 524,288 bytes"), with a traceback.
"""

from __future__ import annotations

import random

import pytest

from flows.blocks.infer import BlockJob
from flows.blocks.lattice import BlockSelection, plan_blocks

JOB = BlockJob(scenes="/data/run/scenes.zarr", probabilities="/data/run/change_prob.zarr",
               model_path="/models/dsqnet.safetensors", model_hash="0" * 64)


@pytest.mark.parametrize("height,width,block_size", [(1, 1, 512), (5000, 3000, 1024), (4096, 8192, 2048)])
def test_a_selection_gives_back_the_blocks_it_was_made_of_in_plan_order(height, width, block_size):
    plan = plan_blocks(height, width, block_size)
    picked = random.Random(0).sample(plan, k=max(1, len(plan) // 3))
    selection = BlockSelection.of(height, width, block_size, picked)
    assert selection.plan() == plan
    assert selection.blocks() == [block for block in plan if block in picked]
    assert len(selection) == len(picked)
    every = BlockSelection.of(height, width, block_size, plan)
    assert every.runs == ((0, len(plan)),) and every.blocks() == plan
    assert BlockSelection.of(height, width, block_size, []).blocks() == []


def test_the_blocks_subflow_of_a_very_large_region_is_accepted_by_the_prefect_api(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.detect import infer_blocks

    height = width = 240_000  # 120 km square at 0.5 m: 13,689 blocks of 2048
    plan = plan_blocks(height, width, 2048)
    resumed = [block for k, block in enumerate(plan) if k % 50]  # a resumed run: 1 block in 50 was done
    with get_client(sync_client=True) as client:
        for todo in (plan, resumed):
            selection = BlockSelection.of(height, width, 2048, todo)
            run = client.create_flow_run(infer_blocks, parameters={
                "job": JOB, "todo": selection, "outputs": None, "outputs_how": None, "plan_line": ""})
            stored = client.read_flow_run(run.id).parameters["todo"]  # what the API keeps
            assert BlockSelection(**{**stored, "runs": tuple(map(tuple, stored["runs"]))}).blocks() == todo
            assert len(stored["runs"]) <= len(plan) // 50 + 1
        with pytest.raises(PrefectHTTPStatusError, match="524,288 bytes"):  # the lists the subflow took before
            client.create_flow_run(infer_blocks, parameters={"job": JOB, "blocks": plan, "todo": plan})
