/*
 * json.cpp: depth-limited, UTF-8-validating JSON parsing for everything the core reads from the network.
 */
#include "pg_diagnosis/core/json.hpp"

#include "pg_diagnosis/core/cpp_only.hpp" // Must be last include.

namespace pgdiag {

/* Deepest bracket nesting outside strings; RapidJSON's Accept and destructor recurse, so reject deep input first. */
static unsigned
MaxNesting(const char *text, size_t length)
{
	unsigned depth = 0, deepest = 0;
	bool in_string = false, escaped = false;

	for (size_t i = 0; i < length; i++) {
		char c = text[i];
		if (in_string) {
			if (escaped)
				escaped = false;
			else if (c == '\\')
				escaped = true;
			else if (c == '"')
				in_string = false;
			continue;
		}
		if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[') {
			if (++depth > deepest)
				deepest = depth;
		} else if ((c == '}' || c == ']') && depth > 0)
			depth--;
	}
	return deepest;
}

bool
ParseJson(const char *text, size_t length, rapidjson::Document &doc, std::string *error)
{
	if (MaxNesting(text, length) > kMaxJsonDepth) {
		*error = "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels";
		return false;
	}
	doc.Parse<rapidjson::kParseValidateEncodingFlag | rapidjson::kParseIterativeFlag>(text, length);
	if (doc.HasParseError()) {
		*error = std::string("invalid JSON at offset ") + std::to_string(doc.GetErrorOffset()) + ": " +
		         rapidjson::GetParseError_En(doc.GetParseError());
		return false;
	}
	return true;
}

std::string
ToJson(const rapidjson::Value &value)
{
	rapidjson::StringBuffer buffer;
	rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
	value.Accept(writer);
	return std::string(buffer.GetString(), buffer.GetSize());
}

std::string
Utf8Prefix(const std::string &text, size_t max_chars)
{
	size_t chars = 0;
	for (size_t i = 0; i < text.size(); i++) {
		/* A character starts at every byte that is not a continuation byte (10xxxxxx). */
		if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80 && chars++ == max_chars)
			return text.substr(0, i);
	}
	return text;
}

} // namespace pgdiag
