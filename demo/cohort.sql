-- The demo cohort: deterministic (seeded), synthetic, loaded with set-based SQL.
-- Parameters (set with set_config before running): demo.patients (default 2000), demo.seed (default 42).
-- Two organizations with an admin and clinicians each (real PostgreSQL roles), one clinician with no patients,
-- and patients whose vital signs over the last 12 hours follow one of five trajectories so every NEWS2 band and
-- the missing-data path occur: stable, slowly deteriorating, acutely septic, recovering, incomplete charting.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgd_demo_admin_a', 'pgd_demo_clin_a1', 'pgd_demo_clin_a2', 'pgd_demo_clin_a3',
                             'pgd_demo_unassigned', 'pgd_demo_admin_b', 'pgd_demo_clin_b1', 'pgd_demo_clin_b2']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
    END LOOP;
END $$;

SELECT setseed((coalesce(nullif(current_setting('demo.seed', true), ''), '42')::int % 1000) / 1000.0);

INSERT INTO diagnosis.organizations (id, name) VALUES
    ('d0000000-0000-4000-8000-00000000000a', 'St Elsewhere General'),
    ('d0000000-0000-4000-8000-00000000000b', 'County Community Hospital');
INSERT INTO diagnosis.members (role_name, organization_id, member_role) VALUES
    ('pgd_demo_admin_a', 'd0000000-0000-4000-8000-00000000000a', 'admin'),
    ('pgd_demo_clin_a1', 'd0000000-0000-4000-8000-00000000000a', 'clinician'),
    ('pgd_demo_clin_a2', 'd0000000-0000-4000-8000-00000000000a', 'clinician'),
    ('pgd_demo_clin_a3', 'd0000000-0000-4000-8000-00000000000a', 'clinician'),
    ('pgd_demo_unassigned', 'd0000000-0000-4000-8000-00000000000a', 'clinician'),
    ('pgd_demo_admin_b', 'd0000000-0000-4000-8000-00000000000b', 'admin'),
    ('pgd_demo_clin_b1', 'd0000000-0000-4000-8000-00000000000b', 'clinician'),
    ('pgd_demo_clin_b2', 'd0000000-0000-4000-8000-00000000000b', 'clinician');

-- Patients: 60 % in organization A; a trajectory drawn once per patient, in patient order (deterministic).
CREATE TEMP TABLE demo_patients AS
SELECT n,
       ('d0000000-0000-4000-8000-' || lpad(to_hex(1000 + n), 12, '0'))::uuid AS id,
       CASE WHEN n % 5 < 3 THEN 'd0000000-0000-4000-8000-00000000000a' ELSE 'd0000000-0000-4000-8000-00000000000b' END::uuid AS org,
       CASE WHEN x < 0.40 THEN 'stable' WHEN x < 0.60 THEN 'deteriorating' WHEN x < 0.75 THEN 'septic'
            WHEN x < 0.90 THEN 'recovering' ELSE 'incomplete' END AS trajectory,
       random() AS jitter
FROM (SELECT n, random() AS x FROM generate_series(1, coalesce(nullif(current_setting('demo.patients', true), ''), '2000')::int) n
      ORDER BY n) s;

INSERT INTO diagnosis.patients (id, organization_id, display_name, data)
SELECT id, org, 'Patient ' || lpad(n::text, 5, '0'),
       jsonb_build_object('age', 25 + (n * 37) % 70, 'ward', (ARRAY['A&E', 'AMU', 'Ward 7', 'HDU'])[1 + n % 4],
                          'trajectory', trajectory)
FROM demo_patients ORDER BY n;

-- Each patient is assigned to one clinician of their organization.
INSERT INTO diagnosis.patient_assignments (patient_id, role_name)
SELECT id, CASE WHEN org = 'd0000000-0000-4000-8000-00000000000a'
                THEN (ARRAY['pgd_demo_clin_a1', 'pgd_demo_clin_a2', 'pgd_demo_clin_a3'])[1 + n % 3]
                ELSE (ARRAY['pgd_demo_clin_b1', 'pgd_demo_clin_b2'])[1 + n % 2] END
FROM demo_patients;

-- Vital signs at 12 h, 6 h and 1 h ago. t = 0, 0.5, 1 moves each trajectory from its start to its end values:
-- stable ends low (or medium when SpO2 91 scores a single 3), deteriorating ends medium, septic ends critical
-- (7+ and rising), recovering is still high but improving, incomplete charting has two parameters only.
INSERT INTO diagnosis.observations (patient_id, code, value, unit, observed_at, data)
SELECT p.id, v.code, v.value, v.unit, now() - make_interval(hours => h.hours_ago), v.data
FROM demo_patients p
CROSS JOIN (VALUES (12, 0.0), (6, 0.5), (1, 1.0)) h(hours_ago, t)
CROSS JOIN LATERAL (
    SELECT CASE p.trajectory
             WHEN 'stable'        THEN jsonb_build_object('rr', 16, 'spo2', CASE WHEN p.jitter < 0.15 THEN 91 ELSE 97 END, 'o2', 0, 'sbp', 126, 'hr', 74, 'acvpu', 'A', 'temp', 36.8)
             WHEN 'deteriorating' THEN jsonb_build_object('rr', 16 + 6 * h.t, 'spo2', 97 - 3 * h.t, 'o2', 0, 'sbp', 124 - 16 * h.t, 'hr', 80 + 22 * h.t, 'acvpu', 'A', 'temp', 37.0 + 1.2 * h.t)
             WHEN 'septic'        THEN jsonb_build_object('rr', 18 + 10 * h.t, 'spo2', 96 - 6 * h.t, 'o2', CASE WHEN h.t = 1 THEN 1 ELSE 0 END, 'sbp', 122 - 34 * h.t, 'hr', 88 + 44 * h.t, 'acvpu', CASE WHEN h.t = 1 THEN 'C' ELSE 'A' END, 'temp', 37.2 + 2.4 * h.t)
             WHEN 'recovering'    THEN jsonb_build_object('rr', 28 - 4 * h.t, 'spo2', 90 + 3 * h.t, 'o2', 1, 'sbp', 92 + 12 * h.t, 'hr', 125 - 20 * h.t, 'acvpu', 'A', 'temp', 39.2 - 0.8 * h.t)
             ELSE                      jsonb_build_object('rr', 19 + 3 * h.t, 'hr', 92)
           END AS vitals
) s
CROSS JOIN LATERAL (VALUES
    ('9279-1', round((s.vitals ->> 'rr')::numeric), '/min', NULL::jsonb),
    ('59408-5', round((s.vitals ->> 'spo2')::numeric), '%', NULL),
    ('supplemental_oxygen', (s.vitals ->> 'o2')::numeric, NULL, NULL),
    ('8480-6', round((s.vitals ->> 'sbp')::numeric), 'mm[Hg]', NULL),
    ('8867-4', round((s.vitals ->> 'hr')::numeric), '/min', NULL),
    ('80288-4', NULL, NULL, jsonb_build_object('acvpu', s.vitals ->> 'acvpu')),
    ('8310-5', round((s.vitals ->> 'temp')::numeric, 1), 'Cel', NULL)
) v(code, value, unit, data)
WHERE (v.code = '80288-4' AND s.vitals ? 'acvpu') OR v.value IS NOT NULL;

SELECT trajectory, count(*) AS patients FROM demo_patients GROUP BY trajectory ORDER BY trajectory;
DROP TABLE demo_patients;
