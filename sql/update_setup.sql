-- `make installcheck-update` runs the pg_regress suites on a database created at the oldest released version and
-- updated, instead of a fresh install: every update script is held to the same expected output.
CREATE EXTENSION pg_diagnosis VERSION '0.1.0';
ALTER EXTENSION pg_diagnosis UPDATE;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'pg_diagnosis') AS at_default_version
FROM pg_extension WHERE extname = 'pg_diagnosis';
