// Result schema v1 (SPEC section 6), as the extension ships it in diagnosis.result_schemas.
#pragma once

static const char *const kSchemaV1 = R"({"type":"object","required":["risk_level","confidence_score","summary","primary_findings","recommendations"],
 "properties":{
  "risk_level":{"enum":["low","medium","high","critical"]},
  "confidence_score":{"type":"number","minimum":0,"maximum":1},
  "summary":{"type":"string","maxLength":4000},
  "primary_findings":{"type":"array","items":{"type":"string"},"maxItems":50},
  "recommendations":{"type":"array","maxItems":50,"items":{"type":"object","required":["text"],
     "properties":{"text":{"type":"string"},"priority":{"enum":["routine","soon","urgent"]}}}},
  "differential":{"type":"array","items":{"type":"object","required":["condition"],
     "properties":{"condition":{"type":"string"},"probability":{"type":"number","minimum":0,"maximum":1}}}}}})";

static const char *const kValidDiagnosis =
    R"({"risk_level":"high","confidence_score":0.83,"summary":"NEWS2 aggregate score 7: high clinical risk.",)"
    R"("primary_findings":["Respiration rate 26 /min scores 3"],"recommendations":[{"text":"Continuous monitoring","priority":"urgent"}]})";
