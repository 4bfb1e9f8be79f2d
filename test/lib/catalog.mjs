// A description of everything the extension defines, from pg_catalog, as sorted lines "kind object: detail",
// so two databases (a fresh install and an updated one) can be compared object by object and the difference
// named exactly. Dropped columns are ignored; column order is not: SELECT * and the expected outputs see it.
const SCHEMA = `(SELECT oid FROM pg_namespace WHERE nspname = 'diagnosis')`;

const QUERIES = {
  relation: `
    SELECT c.oid::regclass::text, format('kind=%s rls=%s force_rls=%s persistence=%s options=%s replident=%s acl=%s comment=%s',
           c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relpersistence, c.reloptions, c.relreplident,
           c.relacl, obj_description(c.oid, 'pg_class'))
    FROM pg_class c WHERE c.relnamespace = ${SCHEMA}`,
  column: `
    SELECT format('%s.%s', a.attrelid::regclass, a.attname),
           format('position=%s type=%s not_null=%s default=%s identity=%s generated=%s collation=%s acl=%s comment=%s',
           row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
           a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, a.attcollation::regcollation,
           a.attacl, col_description(a.attrelid, a.attnum))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = ${SCHEMA} AND c.relkind NOT IN ('i', 'I') AND a.attnum > 0 AND NOT a.attisdropped`,
  constraint: `
    SELECT format('%s %s', coalesce(nullif(c.conrelid, 0)::regclass::text, c.contypid::regtype::text), c.conname),
           format('%s deferrable=%s deferred=%s validated=%s comment=%s', pg_get_constraintdef(c.oid), c.condeferrable,
           c.condeferred, c.convalidated, obj_description(c.oid, 'pg_constraint'))
    FROM pg_constraint c WHERE c.connamespace = ${SCHEMA}`,
  index: `
    SELECT i.indexrelid::regclass::text, format('%s clustered=%s', pg_get_indexdef(i.indexrelid), i.indisclustered)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = ${SCHEMA}`,
  trigger: `
    SELECT format('%s %s', t.tgrelid::regclass, t.tgname), format('%s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = ${SCHEMA} AND NOT t.tgisinternal`,
  function: `
    SELECT format('%s(%s)', p.proname, pg_get_function_identity_arguments(p.oid)),
           format('returns=%s args=%s kind=%s volatile=%s parallel=%s strict=%s security_definer=%s leakproof=%s cost=%s rows=%s language=%s config=%s acl=%s comment=%s probin=%s source=%s',
           pg_get_function_result(p.oid), pg_get_function_arguments(p.oid), p.prokind, p.provolatile, p.proparallel,
           p.proisstrict, p.prosecdef, p.proleakproof, p.procost, p.prorows, l.lanname, p.proconfig, p.proacl,
           obj_description(p.oid, 'pg_proc'), p.probin, md5(p.prosrc) || ' ' || left(regexp_replace(p.prosrc, '\\s+', ' ', 'g'), 120))
    FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.pronamespace = ${SCHEMA}`,
  view: `
    SELECT c.oid::regclass::text, md5(pg_get_viewdef(c.oid)) || ' ' || left(regexp_replace(pg_get_viewdef(c.oid), '\\s+', ' ', 'g'), 160)
    FROM pg_class c WHERE c.relnamespace = ${SCHEMA} AND c.relkind IN ('v', 'm')`,
  policy: `
    SELECT format('%s %s', p.polrelid::regclass, p.polname),
           format('cmd=%s permissive=%s roles=%s using=%s check=%s', p.polcmd, p.polpermissive,
           (SELECT array_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END ORDER BY 1) FROM unnest(p.polroles) r),
           pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
    FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace = ${SCHEMA}`,
  sequence: `
    SELECT s.seqrelid::regclass::text, format('type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owned_by=%s',
           s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
           (SELECT format('%s.%s', d.refobjid::regclass, a.attname) FROM pg_depend d
            JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
            WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid AND d.deptype IN ('a', 'i')))
    FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = ${SCHEMA}`,
  type: `
    SELECT t.oid::regtype::text, format('type=%s', t.typtype)
    FROM pg_type t WHERE t.typnamespace = ${SCHEMA} AND t.typtype NOT IN ('c') AND t.typelem = 0`,
  schema: `
    SELECT n.nspname::text, format('owner_is_superuser=%s acl=%s comment=%s', r.rolsuper,
           regexp_replace(n.nspacl::text, '/[a-z_0-9]+', '/<owner>', 'g'), obj_description(n.oid, 'pg_namespace'))
    FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = 'diagnosis'`,
  extension: `
    SELECT e.extname::text, format('version=%s relocatable=%s config=%s conditions=%s', e.extversion, e.extrelocatable,
           (SELECT array_agg(x::regclass::text ORDER BY x::regclass::text) FROM unnest(e.extconfig) x),
           (SELECT array_agg(format('%s:%s', t::regclass, c) ORDER BY t::regclass::text) FROM unnest(e.extconfig, e.extcondition) u(t, c)))
    FROM pg_extension e WHERE e.extname = 'pg_diagnosis'`,
  member: `
    SELECT pg_describe_object(d.classid, d.objid, d.objsubid), 'member of pg_diagnosis'
    FROM pg_depend d WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
      AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_diagnosis')`,
  init_privilege: `
    SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid), format('%s %s', i.privtype, i.initprivs)
    FROM pg_init_privs i WHERE i.classoid IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_namespace'::regclass)
      AND (i.classoid <> 'pg_namespace'::regclass OR i.objoid = ${SCHEMA})
      AND (i.classoid <> 'pg_class'::regclass OR i.objoid IN (SELECT oid FROM pg_class WHERE relnamespace = ${SCHEMA}))
      AND (i.classoid <> 'pg_proc'::regclass OR i.objoid IN (SELECT oid FROM pg_proc WHERE pronamespace = ${SCHEMA}))`,
};

/** Sorted lines "kind object: detail" describing the extension's objects in the database `client` is connected to. */
export async function describeCatalog(client) {
  const lines = [];
  for (const [kind, sql] of Object.entries(QUERIES)) {
    const r = await client.query({ text: sql, rowMode: 'array' });
    for (const [object, detail] of r.rows) lines.push(`${kind} ${object}: ${detail}`);
  }
  return lines.sort();
}

/** "only in <a>: line" / "only in <b>: line" for every line the two descriptions do not share. */
export function diffCatalogs(a, b, nameA, nameB) {
  const setA = new Set(a);
  const setB = new Set(b);
  return [...a.filter((l) => !setB.has(l)).map((l) => `only in ${nameA}: ${l}`),
    ...b.filter((l) => !setA.has(l)).map((l) => `only in ${nameB}: ${l}`)].sort((x, y) =>
    x.slice(x.indexOf(': ') + 2).localeCompare(y.slice(y.indexOf(': ') + 2)));
}
