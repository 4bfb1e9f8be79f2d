-- Backups (0.2): every table that holds data is an extension configuration table, so pg_dump writes its rows;
-- a restore (a superuser's top-level COPY ... FROM, which is how pg_dump writes rows) gets through the artifacts
-- insert guard, and nothing else does. test/integration/backup.test.mjs runs the real pg_dump and pg_restore.
SELECT c.config::regclass AS config_table, c.condition
FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS c(config, condition)
WHERE e.extname = 'pg_diagnosis'
ORDER BY 1::text;

CREATE TEMP TABLE bk AS
SELECT diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"backup":1}') AS id;
CREATE TEMP VIEW bk_row AS
SELECT id AS run_id, patient_id, organization_id, 'context_pack'::text AS artifact_type, '{}'::jsonb AS artifact_data,
       'x'::text AS content_sha256
FROM diagnosis.runs WHERE id = (SELECT id FROM bk);

-- Refused for a superuser too: INSERT, and a COPY FROM inside another statement.
SELECT pgd_try($$INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type,
    artifact_data, content_sha256) SELECT * FROM bk_row$$) AS superuser_insert;
SELECT format('printf ''%s\t%s\t%s\tcontext_pack\t{}\tx\n''', run_id, patient_id, organization_id) AS copy_program
FROM bk_row \gset
SELECT pgd_try(format('COPY diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data, '
                      'content_sha256) FROM PROGRAM %L', :'copy_program')) AS nested_copy_from;

\set VERBOSITY terse
-- A top-level COPY whose statement inserts (COPY (INSERT ... RETURNING) TO) is no restore.
COPY (INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data,
      content_sha256) SELECT * FROM bk_row RETURNING id) TO STDOUT;

-- Nor is a top-level COPY into another table whose trigger writes artifacts.
CREATE TABLE public.bk_staging (n int);
CREATE FUNCTION public.bk_staging_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data, content_sha256)
    SELECT * FROM bk_row;
    RETURN NULL;
END;
$$;
CREATE TRIGGER bk_staging_writes AFTER INSERT ON public.bk_staging FOR EACH ROW EXECUTE FUNCTION public.bk_staging_writes();
COPY public.bk_staging FROM PROGRAM 'echo 1';

-- Nor is a top-level COPY into artifacts by a role that is not a superuser, even one granted INSERT that
-- bypasses row-level security (which otherwise refuses COPY FROM first).
CREATE ROLE pgd_backup_writer BYPASSRLS IN ROLE pg_execute_server_program;
GRANT INSERT ON diagnosis.artifacts TO pgd_backup_writer;
GRANT SELECT ON bk_row TO pgd_backup_writer;
SET ROLE pgd_backup_writer;
COPY diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data, content_sha256)
    FROM PROGRAM :'copy_program';
RESET ROLE;
REVOKE ALL ON diagnosis.artifacts, bk_row FROM pgd_backup_writer;
DROP ROLE pgd_backup_writer;
\set VERBOSITY default

-- The restore: a superuser's top-level COPY FROM into artifacts.
COPY diagnosis.artifacts (run_id, patient_id, organization_id, artifact_type, artifact_data, content_sha256)
    FROM PROGRAM :'copy_program';
SELECT artifact_type, artifact_data, content_sha256 FROM diagnosis.artifacts WHERE run_id = (SELECT id FROM bk);
-- Still append-only afterwards.
SELECT pgd_try($$UPDATE diagnosis.artifacts SET content_sha256 = 'y' WHERE run_id = (SELECT id FROM bk)$$) AS update_after_restore;

SELECT diagnosis.cancel_diagnosis(id) AS tidy FROM bk;
DROP TABLE public.bk_staging;
DROP FUNCTION public.bk_staging_writes();
