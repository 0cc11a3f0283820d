"""OpenAPI post-processing: every operation documents the errors any request can meet (bad input,
authentication, limits, size, media type, unavailable dependencies), in the one error shape."""

COMMON_ERRORS = {
    "400": "Invalid input or malformed JSON",
    "401": "Missing, invalid or revoked token",
    "403": "Not allowed",
    "404": "Not found",
    "413": "Body above 64 KiB",
    "415": "Not JSON",
    "429": "Rate limited (see Retry-After and the RateLimit headers)",
    "503": "A dependency is unavailable or a shard is moving (see Retry-After)",
}
# What an operation that honours Idempotency-Key (resilience/idempotency.py) may answer besides.
IDEMPOTENCY_ERRORS = {
    "409": "A request with this Idempotency-Key is in progress, or its answer cannot be replayed",
    "422": "This Idempotency-Key was used with a different body",
}


def _takes_idempotency_key(operation: dict) -> bool:
    return any(
        p.get("in") == "header" and p.get("name", "").lower() == "idempotency-key"
        for p in operation.get("parameters", [])
    )


def add_common_errors(result, generator, request, public):
    if "Error" not in result.get("components", {}).get("schemas", {}):
        return result
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            errors = {**COMMON_ERRORS, **(IDEMPOTENCY_ERRORS if _takes_idempotency_key(operation) else {})}
            for code, description in errors.items():
                responses.setdefault(code, {"content": error, "description": description})
    return result
