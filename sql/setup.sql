-- Fixtures shared by the suites: two organizations, five kinds of role, patients, assignments, observations.
-- pgd_try(sql) runs a statement and reports "ok" or "SQLSTATE: message" with uuids masked, so bad-input cases
-- print their SQLSTATE deterministically.
CREATE FUNCTION public.pgd_try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g');
END;
$$;
GRANT EXECUTE ON FUNCTION public.pgd_try(text) TO PUBLIC;

CREATE ROLE pgd_admin1;
CREATE ROLE pgd_clin_assigned;
CREATE ROLE pgd_clin_unassigned;
CREATE ROLE pgd_admin2;
CREATE ROLE pgd_outsider;

INSERT INTO diagnosis.organizations (id, name) VALUES
    ('00000000-0000-0000-0000-00000000000a', 'St Elsewhere'),
    ('00000000-0000-0000-0000-00000000000b', 'County General');
INSERT INTO diagnosis.members (role_name, organization_id, member_role) VALUES
    ('pgd_admin1', '00000000-0000-0000-0000-00000000000a', 'admin'),
    ('pgd_clin_assigned', '00000000-0000-0000-0000-00000000000a', 'clinician'),
    ('pgd_clin_unassigned', '00000000-0000-0000-0000-00000000000a', 'clinician'),
    ('pgd_admin2', '00000000-0000-0000-0000-00000000000b', 'admin');
INSERT INTO diagnosis.patients (id, organization_id, display_name) VALUES
    ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a', 'Ada (org A, assigned)'),
    ('00000000-0000-0000-0000-0000000000a2', '00000000-0000-0000-0000-00000000000a', 'Alan (org A, not assigned)'),
    ('00000000-0000-0000-0000-0000000000b1', '00000000-0000-0000-0000-00000000000b', 'Barbara (org B)');
INSERT INTO diagnosis.patient_assignments (patient_id, role_name) VALUES
    ('00000000-0000-0000-0000-0000000000a1', 'pgd_clin_assigned');
INSERT INTO diagnosis.observations (patient_id, code, value, unit, observed_at)
SELECT p, c, v, u, timestamptz '2026-11-24 10:00+00' - (n || ' hours')::interval
FROM (VALUES ('00000000-0000-0000-0000-0000000000a1'::uuid), ('00000000-0000-0000-0000-0000000000a2'), ('00000000-0000-0000-0000-0000000000b1')) ps(p),
     (VALUES ('9279-1', 18, '/min'), ('spo2', 97, '%'), ('8480-6', 125, 'mmHg')) vs(c, v, u),
     generate_series(0, 2) n;
SELECT count(*) AS observations FROM diagnosis.observations;
