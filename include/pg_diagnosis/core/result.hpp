/*
 * result.hpp: turning a tools/call result into a validated diagnosis.
 *
 * structuredContent when present, else the JSON in the first text content item; isError: true is LLM_ERROR;
 * the diagnosis is validated with RapidJSON's own JSON Schema validator (rapidjson/schema.h) against the
 * schema of the run's schema_version, compiled once per version and cached in a SchemaRegistry.
 */
#pragma once

#include <map>
#include <memory>
#include <string>

#include "pg_diagnosis/core/error_code.hpp"

namespace pgdiag {

/* Compiled JSON Schemas by version ("v1", ...). Not thread-safe; the worker owns one. */
class SchemaRegistry {
public:
	SchemaRegistry();
	~SchemaRegistry();
	SchemaRegistry(const SchemaRegistry &) = delete;
	SchemaRegistry &operator=(const SchemaRegistry &) = delete;

	/* Compiles and stores `schema_json` under `version`, replacing an older one. False (and *error) if it
	 * is not valid JSON or not a usable schema. */
	bool Add(const std::string &version, const std::string &schema_json, std::string *error);
	bool Has(const std::string &version) const;
	void Clear();

	struct Compiled;
	const Compiled *Find(const std::string &version) const;

private:
	std::map<std::string, std::unique_ptr<Compiled>> schemas_;
};

/* What a tools/call result amounts to. */
struct ResultCheck {
	ErrorCode code = ErrorCode::None;
	std::string message;      /* human-readable, for runs.error_message; "" on success */
	std::string details_json; /* a JSON object for runs.error_details, e.g. {"pointer":"/risk_level",
	                             "keyword":"enum","schema_pointer":"#/properties/risk_level"}; "" if none */
	std::string result_json;  /* the validated diagnosis (compact JSON) on success; "" otherwise */
	std::string mcp_run_id;   /* result._meta.run_id when it is a string; "" otherwise */
};

/*
 * Checks the JSON-RPC `result` member of a tools/call response (the whole object, as compact JSON text).
 * Never throws: malformed input is an McpError, an unknown schema_version is a ValidationError.
 */
ResultCheck CheckToolResult(const std::string &result_json, const std::string &schema_version,
                            const SchemaRegistry &schemas);

} // namespace pgdiag
