"""Governance audits (DESIGN.md "Triggers and audits"): the aliased versions of a
registered model are evaluated on a frozen audit set with a frozen calibration, checked
against a policy, reported to an MLflow audit run and tagged.

* :mod:`bpm_lib.audit.policy` — the policy YAML (strict) and the audit errors;
* :mod:`bpm_lib.audit.evaluate` — the rules as pure functions;
* :mod:`bpm_lib.audit.run` — prepare / evaluate / finish, ``run_audit``, scheduling;
* :mod:`bpm_lib.audit.report` — HTML report and verdict table.

Only the light policy module is imported here; the rest loads on use.
"""

from bpm_lib.audit.policy import AuditError, AuditPolicy, AuditViolation, load_policy, parse_policy

__all__ = ["AuditError", "AuditPolicy", "AuditViolation", "load_policy", "parse_policy"]
