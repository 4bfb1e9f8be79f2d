-- The default context pack, wait_for_run's timeout path, the idle worker, and the clean-up of fixtures.
SELECT jsonb_pretty(diagnosis.build_context_pack('00000000-0000-0000-0000-0000000000b1') - 'observations') AS pack;
SELECT o ->> 'code' AS code, o ->> 'value' AS value, o ->> 'observed_at' AS observed_at
FROM jsonb_array_elements(diagnosis.build_context_pack('00000000-0000-0000-0000-0000000000b1') -> 'observations') o
LIMIT 4;

-- wait_for_run returns the current status when the timeout passes (no worker endpoint here).
SELECT diagnosis.wait_for_run(diagnosis.enqueue_diagnosis('00000000-0000-0000-0000-0000000000a1', '{"wait":1}'), '200 ms') AS status_after_timeout;
SELECT clock_timestamp() - now() < interval '5 seconds' AS returned_promptly;

-- The worker is alive (idle: no diagnosis.mcp_url in this instance).
SELECT state IN ('no_endpoint', 'waiting_for_extension') AS idle_state, inflight FROM diagnosis.worker_status();

DROP FUNCTION public.pgd_as(text, text);
DROP ROLE pgd_admin1, pgd_clin_assigned, pgd_clin_unassigned, pgd_admin2, pgd_outsider;
