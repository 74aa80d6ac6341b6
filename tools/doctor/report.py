"""What a run prints: one line per check (`as_text`), or one JSON document for CI (`as_json`).

JSON_SCHEMA describes the --json document; it is generated from the models (ReportDocument and the
models in tools/doctor/__init__.py). It is stable: fields are only ever added, never renamed or removed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tools.doctor import FAIL, WARN, Check, Report, Suggestion, TargetDocument

SKIP_HINT = "SKIP_DOCTOR=1 skips this preflight"

class ReportDocument(BaseModel):
    """The --json document."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True,
                              title="sdxl-endpoint preflight doctor report")

    schema_version: Literal[1] = 1
    ok: bool = Field(description="false when any check failed; the exit status is then 1")
    target: TargetDocument
    checks: list[Check]
    suggestions: list[Suggestion] = Field(description="with --suggest: where the machine is offered, cheapest first "
                                          "(Kubernetes: the cluster's fitting GPUs, smallest first)")


JSON_SCHEMA: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                               **ReportDocument.model_json_schema(mode="serialization")}


def as_json(report: Report) -> dict[str, Any]:
    document = ReportDocument(ok=report.ok, target=report.target.document(), checks=report.checks,
                              suggestions=report.suggestions)
    return document.model_dump(mode="json")


def as_text(report: Report) -> str:
    width = max((len(c.name) for c in report.checks), default=0)
    indent = " " * (2 + 5 + 1 + width + 2)  # under the value: "  " status(5) " " name(width) "  "
    lines = [f"Preflight: {report.target.describe()}"]
    for check in report.checks:
        status = "FAIL" if check.status == FAIL else check.status
        value = check.value.replace("\n", "\n" + indent)
        lines.append(f"  {status:<5} {check.name:<{width}}  {value}")
        if check.fix:
            lines.append(f"{indent}fix: {check.fix}")
    if report.suggestions and report.target.cloud == "kubernetes":
        lines.append("")
        lines.append("The cluster's GPUs that run SDXL, smallest first; select one with its command:")
        for s in report.suggestions:
            lines.append(f"  {s.machine_type:<48} {s.quota_detail}: {', '.join(s.zones)}")
            lines.append(f"    {s.command}")
    elif report.suggestions:
        lines.append("")
        lines.append(f"Where {report.suggestions[0].machine_type} is offered, cheapest first:")
        for s in report.suggestions:
            price = f"${s.usd_per_hour:.3f}/h" if s.usd_per_hour is not None else "price n/a"
            mark = {"available": "quota ok", "insufficient": "NO QUOTA", "unknown": "quota ?"}[s.quota]
            zones = f"  [{', '.join(s.zones)}]" if s.zones != [s.location] else ""
            lines.append(f"  {s.location:<24} {price:>11}  {mark:<8} {s.quota_detail}{zones}")
        sources = dict.fromkeys(s.price_source for s in report.suggestions)
        lines.append(f"  prices: {'; '.join(sources)}")
    failed = [c for c in report.checks if c.status == FAIL]
    warned = [c for c in report.checks if c.status == WARN]
    summary = f"{len(failed)} FAIL, {len(warned)} warn, {len(report.checks) - len(failed) - len(warned)} ok"
    lines.append("")
    lines.append(f"{summary}. Fix each FAIL above before `pulumi up` ({SKIP_HINT})." if failed
                 else f"{summary}: ready for `pulumi up`.")
    return "\n".join(lines)
