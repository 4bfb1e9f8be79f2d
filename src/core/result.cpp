/*
 * result.cpp: from a tools/call result to a validated diagnosis.
 *
 * structuredContent when present, else the JSON in the first text content item; isError is LLM_ERROR; the
 * diagnosis is validated by RapidJSON's own JSON Schema validator against the run's schema version, compiled
 * once per version.
 */
#include <vector>

#include "pg_diagnosis/core/json.hpp"
#include "pg_diagnosis/core/result.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {

struct SchemaRegistry::Compiled {
	rapidjson::Document source;
	std::unique_ptr<rapidjson::SchemaDocument> schema;
};

SchemaRegistry::SchemaRegistry() = default;
SchemaRegistry::~SchemaRegistry() = default;

bool
SchemaRegistry::Add(const std::string &version, const std::string &schema_json, std::string *error)
{
	try {
		auto compiled = std::make_unique<Compiled>();
		if (!ParseJson(schema_json.data(), schema_json.size(), compiled->source, error))
			return false;
		if (!compiled->source.IsObject()) {
			*error = "a JSON Schema must be an object";
			return false;
		}
		compiled->schema = std::make_unique<rapidjson::SchemaDocument>(compiled->source);
		schemas_[version] = std::move(compiled);
		return true;
	} catch (const std::exception &e) {
		*error = e.what();
		return false;
	}
}

bool
SchemaRegistry::Has(const std::string &version) const
{
	return schemas_.count(version) > 0;
}

void
SchemaRegistry::Clear()
{
	schemas_.clear();
}

const SchemaRegistry::Compiled *
SchemaRegistry::Find(const std::string &version) const
{
	auto it = schemas_.find(version);
	return it == schemas_.end() ? nullptr : it->second.get();
}

namespace {

/* PostgreSQL's jsonb and text cannot hold U+0000; look through every string (iteratively). */
bool
ContainsNul(const rapidjson::Value &root)
{
	std::vector<const rapidjson::Value *> stack{&root};
	while (!stack.empty()) {
		const rapidjson::Value *v = stack.back();
		stack.pop_back();
		if (v->IsString()) {
			if (std::char_traits<char>::find(v->GetString(), v->GetStringLength(), '\0'))
				return true;
		} else if (v->IsArray()) {
			for (const auto &item : v->GetArray())
				stack.push_back(&item);
		} else if (v->IsObject()) {
			for (const auto &member : v->GetObject()) {
				if (std::char_traits<char>::find(member.name.GetString(), member.name.GetStringLength(), '\0'))
					return true;
				stack.push_back(&member.value);
			}
		}
	}
	return false;
}

const rapidjson::Value *
FirstTextItem(const rapidjson::Value &result)
{
	auto content = result.FindMember("content");
	if (content == result.MemberEnd() || !content->value.IsArray())
		return nullptr;
	for (const auto &item : content->value.GetArray()) {
		if (!item.IsObject())
			continue;
		auto type = item.FindMember("type");
		auto text = item.FindMember("text");
		if (type != item.MemberEnd() && type->value.IsString() && std::string(type->value.GetString()) == "text" &&
		    text != item.MemberEnd() && text->value.IsString())
			return &text->value;
	}
	return nullptr;
}

ResultCheck
Fail(ErrorCode code, std::string message, std::string details = "")
{
	ResultCheck check;
	check.code = code;
	check.message = std::move(message);
	check.details_json = std::move(details);
	return check;
}

ResultCheck
Validate(const rapidjson::Value &diagnosis, const std::string &schema_version, const SchemaRegistry &schemas)
{
	const SchemaRegistry::Compiled *compiled = schemas.Find(schema_version);
	if (!compiled)
		return Fail(ErrorCode::ValidationError, "unknown schema_version \"" + schema_version + "\"");
	if (ContainsNul(diagnosis))
		return Fail(ErrorCode::McpError, "result contains a NUL character");

	rapidjson::SchemaValidator validator(*compiled->schema);
	if (!diagnosis.Accept(validator)) {
		rapidjson::StringBuffer instance, schema;
		validator.GetInvalidDocumentPointer().StringifyUriFragment(instance);
		validator.GetInvalidSchemaPointer().StringifyUriFragment(schema);
		std::string pointer(instance.GetString(), instance.GetSize());
		std::string keyword = validator.GetInvalidSchemaKeyword();
		std::string schema_pointer(schema.GetString(), schema.GetSize());
		/* URI fragments start with '#'; the instance pointer is reported as a plain JSON Pointer. */
		if (!pointer.empty() && pointer[0] == '#')
			pointer.erase(0, 1);

		rapidjson::Document details(rapidjson::kObjectType);
		auto &a = details.GetAllocator();
		details.AddMember("pointer", rapidjson::Value(pointer.c_str(), a), a);
		details.AddMember("keyword", rapidjson::Value(keyword.c_str(), a), a);
		details.AddMember("schema_pointer", rapidjson::Value(schema_pointer.c_str(), a), a);
		details.AddMember("schema_version", rapidjson::Value(schema_version.c_str(), a), a);
		return Fail(ErrorCode::ValidationError,
		            "result does not match schema " + schema_version + ": \"" + keyword + "\" fails at " +
		                (pointer.empty() ? std::string("the root") : pointer),
		            ToJson(details));
	}
	ResultCheck ok;
	ok.result_json = ToJson(diagnosis);
	return ok;
}

} // namespace

ResultCheck
CheckToolResult(const std::string &result_json, const std::string &schema_version, const SchemaRegistry &schemas)
{
	try {
		rapidjson::Document result;
		std::string error;
		if (!ParseJson(result_json.data(), result_json.size(), result, &error))
			return Fail(ErrorCode::McpError, "the tools/call result is not valid JSON: " + error);
		if (!result.IsObject())
			return Fail(ErrorCode::McpError, "the tools/call result is not a JSON object");

		std::string mcp_run_id;
		auto meta = result.FindMember("_meta");
		if (meta != result.MemberEnd() && meta->value.IsObject()) {
			auto run_id = meta->value.FindMember("run_id");
			if (run_id != meta->value.MemberEnd() && run_id->value.IsString())
				mcp_run_id.assign(run_id->value.GetString(), run_id->value.GetStringLength());
		}

		ResultCheck check;
		auto is_error = result.FindMember("isError");
		if (is_error != result.MemberEnd() && is_error->value.IsBool() && is_error->value.GetBool()) {
			const rapidjson::Value *text = FirstTextItem(result);
			std::string message = text ? std::string(text->GetString(), text->GetStringLength()) : "";
			if (message.size() > 1000)
				message.resize(1000);
			check = Fail(ErrorCode::LlmError,
			             message.empty() ? "the tool reported an error" : "the tool reported an error: " + message);
		} else {
			auto structured = result.FindMember("structuredContent");
			if (structured != result.MemberEnd()) {
				check = Validate(structured->value, schema_version, schemas);
			} else if (const rapidjson::Value *text = FirstTextItem(result)) {
				rapidjson::Document parsed;
				if (!ParseJson(text->GetString(), text->GetStringLength(), parsed, &error))
					check = Fail(ErrorCode::ValidationError, "the result text is not JSON: " + error,
					             "{\"pointer\":\"\",\"keyword\":\"type\"}");
				else
					check = Validate(parsed, schema_version, schemas);
			} else
				check = Fail(ErrorCode::McpError,
				             "the tools/call result has neither structuredContent nor a text content item");
		}
		check.mcp_run_id = mcp_run_id;
		return check;
	} catch (const std::exception &e) {
		return Fail(ErrorCode::UnknownError, std::string("checking the result failed: ") + e.what());
	}
}

} // namespace pgdiag
