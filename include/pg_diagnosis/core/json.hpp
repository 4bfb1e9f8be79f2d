/*
 * json.hpp: the one way the core includes RapidJSON.
 *
 * RapidJSON's default RAPIDJSON_ASSERT is assert(), which would abort the PostgreSQL backend on malformed use;
 * here it throws, and the core's entry points catch. Every core file includes RapidJSON only through this header
 * so the definition is the same in every translation unit.
 */
#pragma once

#include <stdexcept>
#include <string>

namespace pgdiag {
struct JsonAssertion : std::logic_error {
	using std::logic_error::logic_error;
};
} // namespace pgdiag

#ifndef RAPIDJSON_ASSERT
#define RAPIDJSON_ASSERT(x)                                                                                            \
	do {                                                                                                               \
		if (!(x))                                                                                                      \
			throw ::pgdiag::JsonAssertion("RapidJSON assertion failed: " #x);                                          \
	} while (0)
#endif
#define RAPIDJSON_HAS_STDSTRING 1
#define RAPIDJSON_NOEXCEPT_ASSERT(x) ((void) 0)

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/schema.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace pgdiag {

/* Deepest nesting accepted in any JSON the core parses: hostile input must not exhaust the stack. */
constexpr unsigned kMaxJsonDepth = 128;

/* Parses `text` (validating UTF-8, iteratively, depth-limited) into `doc`. False and *error on failure. */
bool ParseJson(const char *text, size_t length, rapidjson::Document &doc, std::string *error);

/* The first `max_chars` characters (code points) of valid UTF-8 text, never cutting one in half. */
std::string Utf8Prefix(const std::string &text, size_t max_chars);

/* Compact JSON text of a value. */
std::string ToJson(const rapidjson::Value &value);

} // namespace pgdiag
