"""`cardio pipeline run --config FILE`: one configuration file's pipeline on this machine.

The same steps as the demo after its data is made: check the span against the configuration,
run the pipeline (LocalDagRunner), report per slice, compare, serve (demo.run_and_report).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

from cardio.pipeline import demo, preflight, report
from cardio.pipeline.config_file import RunConfig


def run(run_config: RunConfig, echo: Callable[[str], None]) -> dict:
    from cardio.components import evaluator

    started = time.time()
    if not run_config.data_root:
        raise preflight.SpanError(f"{run_config.source}: no data_root in the file; pass --data-root")
    if not run_config.workdir:
        raise preflight.SpanError(f"{run_config.source}: no workdir in the file; pass --workdir")
    config = run_config.config
    echo(f"Configuration {run_config.source}: {len(config.grid)} model(s) "
         f"({', '.join(c.name for c in config.grid)}); internal sites "
         f"{', '.join(config.internal_sites)}; external site {config.external_site or 'none'}")
    echo(evaluator.describe_gate(config.gate, config.external_site, config.ci_description))
    weights = demo.weights_used(config)
    echo(f"ImageNet weights: {weights or 'none: random initialisation'}")
    echo(f"Lung crop: {'U-Net ' + config.segmenter_uri if config.segmenter_uri else 'OFF'}")
    # Refuses unknown sites or views, and evaluated splits with too few positives, before any run.
    found = preflight.check(config, run_config.data_root)
    for span, counts in found.items():
        echo(f"span-{span}: sites {counts['site']}, views {counts['view']}")
    echo(report.format_counts(preflight.split_totals(found)))
    summary = demo.run_and_report(config, run_config.data_root, run_config.pipeline_root,
                                  run_config.serving_dir, echo, started)
    summary["config"] = run_config.source
    summary["splits"] = preflight.split_totals(found)
    summary["imagenet_weights"] = weights
    echo(demo.format_stage_seconds(summary["stage_seconds"], time.time() - started))
    return summary


def with_places(run_config: RunConfig, data_root: str | None, workdir: str | None) -> RunConfig:
    """The command line's --data-root and --workdir override the file's."""
    changes = {k: os.path.abspath(v) for k, v in (("data_root", data_root), ("workdir", workdir))
               if v}
    return dataclasses.replace(run_config, **changes)
