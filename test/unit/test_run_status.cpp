// The statuses, error codes and retry rule as C++ names them (run_status.hpp, error_code.hpp) against the CHECK
// lists of diagnosis.runs in the install script: a status or an error code added on one side only fails here.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "pg_diagnosis/core/error_code.hpp"
#include "pg_diagnosis/core/run_status.hpp"

using namespace pgdiag;

namespace {

std::string
InstallScript()
{
	std::ifstream file(std::string(PGDIAG_SOURCE_DIR) + "/sql/pg_diagnosis.sql");
	std::stringstream text;
	text << file.rdbuf();
	return text.str();
}

/* The quoted values of `CHECK (<column> IN (...))` inside CREATE TABLE diagnosis.runs. */
std::set<std::string>
RunsCheckList(const std::string &column)
{
	const std::string sql = InstallScript();
	const size_t table = sql.find("CREATE TABLE diagnosis.runs (");
	const std::string check = "CHECK (" + column + " IN (";
	const size_t begin = sql.find(check, table);
	const size_t end = sql.find("))", begin);
	std::set<std::string> values;
	if (table == std::string::npos || begin == std::string::npos || end == std::string::npos)
		return values;
	for (size_t q = sql.find('\'', begin); q != std::string::npos && q < end; q = sql.find('\'', q + 1)) {
		const size_t close = sql.find('\'', q + 1);
		values.insert(sql.substr(q + 1, close - q - 1));
		q = close;
	}
	return values;
}

} // namespace

TEST(RunStatus, NamesAreTheStatusCheckOfRuns)
{
	std::set<std::string> cpp(std::begin(kRunStatusNames), std::end(kRunStatusNames));
	EXPECT_EQ(cpp.size(), static_cast<size_t>(kRunStatusCount));
	EXPECT_EQ(cpp, RunsCheckList("status"));
}

TEST(RunStatus, ErrorCodesAreTheErrorCodeCheckOfRuns)
{
	std::set<std::string> cpp;
	for (ErrorCode code : kRunErrorCodes)
		cpp.insert(ErrorCodeName(code));
	EXPECT_EQ(cpp.size(), sizeof(kRunErrorCodes) / sizeof(kRunErrorCodes[0]));
	EXPECT_EQ(cpp, RunsCheckList("error_code"));
}

TEST(RunStatus, TerminalStatuses)
{
	EXPECT_FALSE(IsTerminalStatusName("queued"));
	EXPECT_FALSE(IsTerminalStatusName("running"));
	EXPECT_TRUE(IsTerminalStatusName("completed"));
	EXPECT_TRUE(IsTerminalStatusName("failed"));
	EXPECT_TRUE(IsTerminalStatusName("cancelled"));
	EXPECT_FALSE(IsTerminalStatusName("RUNNING"));
	EXPECT_FALSE(IsTerminalStatusName(""));
	EXPECT_STREQ(RunStatusName(RunStatus::Cancelled), "cancelled");
}

// The same truth table as diagnosis._attempts_spent in sql/lifecycle.sql (expected/lifecycle.out).
TEST(RunStatus, RetryRule)
{
	EXPECT_TRUE(AttemptsSpent(1, 0));
	EXPECT_FALSE(AttemptsSpent(1, 1));
	EXPECT_TRUE(AttemptsSpent(2, 1));
	EXPECT_FALSE(AttemptsSpent(3, 3));
	EXPECT_TRUE(AttemptsSpent(4, 3));
}
