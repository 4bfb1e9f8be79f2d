// From a tools/call result to a validated diagnosis.
#include <gtest/gtest.h>

#include "pg_diagnosis/core/result.hpp"
#include "schema_v1.hpp"

using namespace pgdiag;

class ResultTest : public ::testing::Test {
protected:
	void SetUp() override
	{
		std::string error;
		ASSERT_TRUE(schemas.Add("v1", SchemaV1(), &error)) << error;
	}
	SchemaRegistry schemas;
};

static std::string
Structured(const std::string &diagnosis, const std::string &extra = "")
{
	return R"({"content":[{"type":"text","text":"ignored"}],"structuredContent":)" + diagnosis + extra + "}";
}

TEST_F(ResultTest, StructuredContentIsPreferred)
{
	ResultCheck c = CheckToolResult(Structured(kValidDiagnosis, R"(,"_meta":{"run_id":"mcp-42"})"), "v1", schemas);
	EXPECT_EQ(c.code, ErrorCode::None) << c.message;
	EXPECT_NE(c.result_json.find("\"risk_level\":\"high\""), std::string::npos);
	EXPECT_EQ(c.mcp_run_id, "mcp-42");
}

TEST_F(ResultTest, FirstTextItemWhenNoStructuredContent)
{
	std::string text = std::string(kValidDiagnosis);
	std::string escaped;
	for (char ch : text)
		escaped += ch == '"' ? std::string("\\\"") : std::string(1, ch);
	ResultCheck c = CheckToolResult(
	    R"({"content":[{"type":"image","data":"x"},{"type":"text","text":")" + escaped + R"("}]})", "v1", schemas);
	EXPECT_EQ(c.code, ErrorCode::None) << c.message;
	EXPECT_EQ(c.mcp_run_id, "");
}

TEST_F(ResultTest, IsErrorIsLlmError)
{
	ResultCheck c =
	    CheckToolResult(R"({"isError":true,"content":[{"type":"text","text":"model overloaded"}]})", "v1", schemas);
	EXPECT_EQ(c.code, ErrorCode::LlmError);
	EXPECT_NE(c.message.find("model overloaded"), std::string::npos);
}

TEST_F(ResultTest, SchemaViolationsNameThePointerAndKeyword)
{
	ResultCheck c = CheckToolResult(
	    Structured(
	        R"({"risk_level":"purple","confidence_score":0.5,"summary":"s","primary_findings":[],"recommendations":[]})"),
	    "v1", schemas);
	EXPECT_EQ(c.code, ErrorCode::ValidationError);
	EXPECT_NE(c.details_json.find("\"pointer\":\"/risk_level\""), std::string::npos) << c.details_json;
	EXPECT_NE(c.details_json.find("\"keyword\":\"enum\""), std::string::npos) << c.details_json;

	c = CheckToolResult(
	    Structured(
	        R"({"risk_level":"low","confidence_score":1.7,"summary":"s","primary_findings":[],"recommendations":[]})"),
	    "v1", schemas);
	EXPECT_EQ(c.code, ErrorCode::ValidationError);
	EXPECT_NE(c.details_json.find("\"keyword\":\"maximum\""), std::string::npos) << c.details_json;

	c = CheckToolResult(
	    Structured(R"({"risk_level":"low","confidence_score":0.1,"summary":"s","primary_findings":[]})"), "v1",
	    schemas);
	EXPECT_EQ(c.code, ErrorCode::ValidationError);
	EXPECT_NE(c.details_json.find("\"keyword\":\"required\""), std::string::npos) << c.details_json;

	c = CheckToolResult(
	    Structured(
	        R"({"risk_level":"low","confidence_score":0.1,"summary":"s","primary_findings":[],"recommendations":[{"priority":"soon"}]})"),
	    "v1", schemas);
	EXPECT_EQ(c.code, ErrorCode::ValidationError);
	EXPECT_NE(c.details_json.find("/recommendations/0"), std::string::npos) << c.details_json;
}

TEST_F(ResultTest, TextThatIsNotJsonFailsValidation)
{
	ResultCheck c = CheckToolResult(R"({"content":[{"type":"text","text":"The patient looks fine."}]})", "v1", schemas);
	EXPECT_EQ(c.code, ErrorCode::ValidationError);
}

TEST_F(ResultTest, ProtocolViolationsAreMcpErrors)
{
	EXPECT_EQ(CheckToolResult("{not json", "v1", schemas).code, ErrorCode::McpError);
	EXPECT_EQ(CheckToolResult("[1,2]", "v1", schemas).code, ErrorCode::McpError);
	EXPECT_EQ(CheckToolResult(R"({"content":[]})", "v1", schemas).code, ErrorCode::McpError);
	EXPECT_EQ(CheckToolResult("{\"content\":[{\"type\":\"text\",\"text\":\"\xff\xfe\"}]}", "v1", schemas).code,
	          ErrorCode::McpError);
	std::string deep(10000, '[');
	EXPECT_EQ(CheckToolResult("{\"structuredContent\":" + deep, "v1", schemas).code, ErrorCode::McpError);
}

TEST_F(ResultTest, UnknownSchemaVersionAndNul)
{
	EXPECT_EQ(CheckToolResult(Structured(kValidDiagnosis), "v9", schemas).code, ErrorCode::ValidationError);
	ResultCheck c = CheckToolResult(
	    Structured(
	        R"({"risk_level":"low","confidence_score":0.5,"summary":"a\u0000b","primary_findings":[],"recommendations":[]})"),
	    "v1", schemas);
	EXPECT_EQ(c.code, ErrorCode::McpError);
	EXPECT_NE(c.message.find("NUL"), std::string::npos);
}

TEST(SchemaRegistry, RejectsBrokenSchemas)
{
	SchemaRegistry r;
	std::string error;
	EXPECT_FALSE(r.Add("x", "{", &error));
	EXPECT_FALSE(error.empty());
	EXPECT_FALSE(r.Add("y", "[]", &error));
	EXPECT_FALSE(r.Has("x"));
	EXPECT_TRUE(r.Add("v1", SchemaV1(), &error));
	EXPECT_TRUE(r.Has("v1"));
	r.Clear();
	EXPECT_FALSE(r.Has("v1"));
}
