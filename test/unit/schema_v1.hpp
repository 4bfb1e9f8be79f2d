// Result schema v1 as the extension ships it: read from the install script (between the $schema$ quotes of its
// INSERT INTO diagnosis.result_schemas), so the core is tested against exactly what CREATE EXTENSION installs.
#pragma once

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#ifndef PGDIAG_SOURCE_DIR
#error "PGDIAG_SOURCE_DIR must name the repository (CMakeLists.txt defines it)"
#endif

inline const std::string &
SchemaV1()
{
	static const std::string schema = [] {
		std::ifstream file(std::string(PGDIAG_SOURCE_DIR) + "/sql/pg_diagnosis.sql");
		std::stringstream text;
		text << file.rdbuf();
		const std::string sql = text.str();
		const std::string quote = "$schema$";
		size_t begin = sql.find(quote);
		size_t end = begin == std::string::npos ? begin : sql.find(quote, begin + quote.size());
		if (end == std::string::npos)
			throw std::runtime_error("schema v1 not found in sql/pg_diagnosis.sql");
		return sql.substr(begin + quote.size(), end - begin - quote.size());
	}();
	return schema;
}

static const char *const kValidDiagnosis =
    R"({"risk_level":"high","confidence_score":0.83,"summary":"NEWS2 aggregate score 7: high clinical risk.",)"
    R"("primary_findings":["Respiration rate 26 /min scores 3"],"recommendations":[{"text":"Continuous monitoring","priority":"urgent"}]})";
