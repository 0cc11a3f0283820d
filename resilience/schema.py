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


def add_common_errors(result, generator, request, public):
    if "Error" not in result.get("components", {}).get("schemas", {}):
        return result
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, description in COMMON_ERRORS.items():
                responses.setdefault(code, {"content": error, "description": description})
    return result
