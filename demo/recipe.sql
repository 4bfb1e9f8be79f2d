-- Recipe: "assessment completed -> diagnosis run". An application table whose rows are marked complete enqueues
-- a run idempotently, keyed by the assessment: completing twice, or two sessions completing at once, yields
-- exactly one run. The trigger runs as the user who completes the assessment, so row-level security decides
-- whether they may request a diagnosis for that patient.
CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE app.assessments (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id    uuid NOT NULL,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'completed')),
    completed_at  timestamptz,
    diagnosis_run uuid
);

CREATE FUNCTION app.enqueue_diagnosis_on_completion() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.status = 'completed' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'completed') THEN
        -- The key makes a second enqueue for the same assessment return the same run (DEDUPLICATED).
        NEW.diagnosis_run := diagnosis.enqueue_diagnosis(
            NEW.patient_id,
            jsonb_build_object('assessment_id', NEW.id, 'reason', 'assessment completed'),
            idempotency_key => 'assessment:' || NEW.id);
        NEW.completed_at := coalesce(NEW.completed_at, now());
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER assessments_enqueue_diagnosis
    BEFORE INSERT OR UPDATE OF status ON app.assessments
    FOR EACH ROW EXECUTE FUNCTION app.enqueue_diagnosis_on_completion();

GRANT USAGE ON SCHEMA app TO PUBLIC;
GRANT SELECT, INSERT, UPDATE ON app.assessments TO PUBLIC;
