"""What a run prints: one line per check (`as_text`), or one JSON document for CI (`as_json`).

JSON_SCHEMA describes the --json document. It is stable: fields are only ever added, never
renamed or removed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from stacks.doctor import FAIL, OK, WARN, Report

SKIP_HINT = "SKIP_DOCTOR=1 skips this preflight"

JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sdxl-endpoint preflight doctor report",
    "type": "object",
    "required": ["schema_version", "ok", "target", "checks", "suggestions"],
    "properties": {
        "schema_version": {"const": 1},
        "ok": {"type": "boolean", "description": "false when any check failed; the exit status is then 1"},
        "target": {
            "type": "object",
            "required": ["cloud", "stack", "spot", "region", "zone", "project", "machine_type", "gpu",
                         "gpu_count", "gpu_memory_gb", "vcpus", "usd_per_hour"],
            "properties": {
                "cloud": {"enum": ["aws", "gcp"]},
                "stack": {"type": ["string", "null"]},
                "spot": {"type": "boolean"},
                "region": {"type": ["string", "null"]},
                "zone": {"type": ["string", "null"]},
                "project": {"type": ["string", "null"]},
                "machine_type": {"type": ["string", "null"]},
                "gpu": {"type": ["string", "null"]},
                "gpu_count": {"type": ["integer", "null"]},
                "gpu_memory_gb": {"type": ["integer", "null"]},
                "vcpus": {"type": ["integer", "null"]},
                "usd_per_hour": {"type": ["number", "null"]},
            },
        },
        "checks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "status", "value", "fix"],
                "additionalProperties": False,
                "properties": {
                    "name": {"enum": ["config", "credentials", "offering", "gpu", "quota", "image", "spot-price",
                                      "compute-api", "accelerator", "machine-type", "regional-quota",
                                      "global-quota"]},
                    "status": {"enum": [OK, WARN, FAIL]},
                    "value": {"type": "string"},
                    "fix": {"type": ["string", "null"]},
                },
            },
        },
        "suggestions": {
            "type": "array",
            "description": "with --suggest: where the machine is offered, cheapest first",
            "items": {
                "type": "object",
                "required": ["location", "zones", "machine_type", "usd_per_hour", "price_source", "quota",
                             "quota_detail"],
                "additionalProperties": False,
                "properties": {
                    "location": {"type": "string"},
                    "zones": {"type": "array", "items": {"type": "string"}},
                    "machine_type": {"type": "string"},
                    "usd_per_hour": {"type": ["number", "null"]},
                    "price_source": {"type": "string"},
                    "quota": {"enum": ["available", "insufficient", "unknown"]},
                    "quota_detail": {"type": "string"},
                },
            },
        },
    },
}


def as_json(report: Report) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "ok": report.ok,
        "target": report.target.as_json(),
        "checks": [asdict(c) for c in report.checks],
        "suggestions": [asdict(s) for s in report.suggestions],
    }


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
    if report.suggestions:
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
