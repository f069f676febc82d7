"""Evaluate every new checkpoint automatically (DESIGN.md "Triggers and audits").

* :mod:`~bpm_lib.trigger.webhooks` — MLflow webhook signatures and payloads (pure logic);
* :mod:`~bpm_lib.trigger.state` — the SQLite inbox of deliveries and exactly-once jobs;
* :mod:`~bpm_lib.trigger.submitters` — how an evaluation starts (``local``, ``kfp``);
* :mod:`~bpm_lib.trigger.pollers` — S3 prefix and model-registry pollers;
* :mod:`~bpm_lib.trigger.service` — the HTTP endpoint, the worker, and the config.

``bpm trigger serve|poll|register-webhook|jobs`` (:mod:`bpm_lib.cli.trigger`) runs them.
"""

from bpm_lib.trigger.service import (
    TriggerConfig,
    TriggerService,
    load_trigger_config,
    parse_trigger_config,
)
from bpm_lib.trigger.state import TriggerState
from bpm_lib.trigger.submitters import SUBMITTERS, EvaluationRequest, Submission, Submitter

__all__ = [
    "SUBMITTERS",
    "EvaluationRequest",
    "Submission",
    "Submitter",
    "TriggerConfig",
    "TriggerService",
    "TriggerState",
    "load_trigger_config",
    "parse_trigger_config",
]
